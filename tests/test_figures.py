"""Figures: panel layout, prompt drawing, automatic-mask overlays, captions from the scores."""

from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import name2label

from segstyle_core.errors import InputError
from segstyle_core.figures import (
    BACKGROUND_COLOR,
    BOX_COLOR,
    FOREGROUND_COLOR,
    draw_prompts,
    format_scores,
    image_panel,
    label_ids_to_rgb,
    mask_to_rgb,
    overlay_masks,
    panel,
)
from segstyle_core.metrics import score_masks
from segstyle_core.segment.base import Prompt

H, W = 48, 64
GRAY = 128


def _gray() -> np.ndarray:
    return np.full((H, W, 3), GRAY, dtype=np.uint8)


def _bbox(hit: np.ndarray) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` of the True pixels (inclusive)."""
    ys, xs = np.nonzero(hit)
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


def test_panel_lays_tiles_out_in_a_grid_at_tile_height() -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    shapes = [(20, 40), (40, 40), (10, 30), (32, 16), (24, 24)]  # (h, w): aspect ratios vary
    tiles = [
        (f"t{i}", np.full((*shape, 3), color, dtype=np.uint8))
        for i, (shape, color) in enumerate(zip(shapes, colors, strict=True))
    ]
    out = panel(tiles, "caption", columns=3, tile_height=30)
    assert out.dtype == np.uint8 and out.ndim == 3
    boxes = []
    for (h, w), color in zip(shapes, colors, strict=True):
        hit = np.all(out == color, axis=2)
        y0, x0, y1, x1 = _bbox(hit)
        assert y1 - y0 + 1 == 30  # every tile scaled to tile_height
        assert x1 - x0 + 1 == pytest.approx(w * 30 / h, abs=1)  # aspect ratio kept
        assert hit.sum() == (y1 - y0 + 1) * (x1 - x0 + 1)  # nothing drawn over a tile
        boxes.append((y0, (x0 + x1) / 2))
    # Row-major grid of three columns: tiles 0-2 on the first row, 3-4 below, each centred
    # in its column.
    assert boxes[0][0] == boxes[1][0] == boxes[2][0] < boxes[3][0] == boxes[4][0]
    assert boxes[0][1] < boxes[1][1] < boxes[2][1]
    assert boxes[3][1] == pytest.approx(boxes[0][1], abs=1)
    assert boxes[4][1] == pytest.approx(boxes[1][1], abs=1)
    widest = max(round(w * 30 / h) for h, w in shapes)
    assert out.shape[1] >= 3 * widest


def test_panel_rejects_no_tiles_and_bad_tiles() -> None:
    with pytest.raises(InputError, match="at least one tile"):
        panel([], "x")
    with pytest.raises(InputError, match="mask_to_rgb"):
        panel([("mask", np.zeros((H, W), dtype=bool))], "x")


def test_draw_prompts_marks_box_edges_and_points_only() -> None:
    image = _gray()
    box = (10.0, 12.0, 50.0, 40.0)
    prompt = Prompt(box=box, points=((20.0, 25.0), (40.0, 25.0)), point_labels=(1, 0))
    out = draw_prompts(image, [prompt])
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, _gray())  # the input is not modified
    for x, y in [(10, 30), (50, 30), (30, 12), (30, 40)]:  # one point on each edge
        assert tuple(out[y, x]) == BOX_COLOR
    assert tuple(out[25, 20]) == FOREGROUND_COLOR
    assert tuple(out[25, 40]) == BACKGROUND_COLOR
    changed = np.any(out != GRAY, axis=2)
    assert not changed[:8].any() and not changed[44:].any() and not changed[:, :8].any()
    assert not changed[18:34, 26:34].any()  # inside the box, away from the dots


def test_overlay_masks_gives_each_mask_its_own_colour() -> None:
    image = _gray()
    masks = [np.zeros((H, W), dtype=bool) for _ in range(4)]
    masks[0][:, :16] = True
    masks[1][:, 16:32] = True
    masks[2][:, 32:48] = True
    masks[3][:, 48:56] = True  # columns 56.. are left uncovered
    out = overlay_masks(image, masks, alpha=0.5, seed=3)
    colors = []
    for mask in masks:
        region = out[mask]
        assert (region == region[0]).all()  # one colour per mask
        assert not (region[0] == GRAY).all()
        colors.append(tuple(region[0]))
    assert len(set(colors)) == len(masks)
    np.testing.assert_array_equal(out[:, 56:], image[:, 56:])
    np.testing.assert_array_equal(overlay_masks(image, masks, alpha=0.0), image)
    assert not np.array_equal(overlay_masks(image, masks, seed=4), out)


def test_overlay_keeps_small_mask_visible_on_large_one() -> None:
    large = np.zeros((H, W), dtype=bool)
    large[4:44, 4:60] = True
    small = np.zeros((H, W), dtype=bool)
    small[20:28, 20:28] = True
    # The small mask comes first in the list but is painted last.
    out = overlay_masks(_gray(), [small, large])
    assert tuple(out[24, 24]) != tuple(out[10, 10])
    with pytest.raises(InputError, match="automatic mask 0"):
        overlay_masks(_gray(), [np.zeros((H + 1, W), dtype=bool)])


def test_label_ids_render_in_table_colours() -> None:
    ids = np.zeros((H, W), dtype=np.int32)
    ids[:, 10:20] = name2label["car"].id
    ids[:, 20:30] = name2label["road"].id
    rgb = label_ids_to_rgb(ids)
    assert tuple(rgb[5, 15]) == name2label["car"].color
    assert tuple(rgb[5, 25]) == name2label["road"].color
    assert tuple(rgb[5, 5]) == name2label["unlabeled"].color
    with pytest.raises(InputError, match="instanceIds"):
        label_ids_to_rgb(np.full((H, W), 26001, dtype=np.int32))


def _scene() -> dict:
    rng = np.random.default_rng(0)
    gt = np.zeros((H, W), dtype=bool)
    gt[10:30, 20:50] = True
    pred = np.zeros((H, W), dtype=bool)
    pred[12:32, 22:50] = True
    ids = np.where(gt, name2label["car"].id, name2label["road"].id).astype(np.int32)
    original = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return {
        "original": original,
        "gt_color": ids,
        "gt_binary": gt,
        "pred_mask": pred,
        "prompts": [Prompt(box=(20.0, 10.0, 50.0, 30.0))],
        "stylized": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
        "composite": original,
    }


def test_caption_numbers_come_from_the_scores() -> None:
    scene = _scene()
    scores = score_masks(scene["pred_mask"], scene["gt_binary"])
    assert format_scores({"iou": scores.iou, "dice": scores.dice}) == (
        f"IoU {scores.iou:.3f} · Dice {scores.dice:.3f}"
    )
    assert format_scores({"iou": float("nan"), "dice": None}) == "IoU n/a · Dice n/a"
    low = image_panel(**scene, scores={"iou": 0.5, "dice": 0.6}, tile_height=40)
    high = image_panel(**scene, scores={"iou": 0.9, "dice": 0.6}, tile_height=40)
    assert low.shape == high.shape
    differs = np.any(low != high, axis=2).any(axis=1)
    rows = np.nonzero(differs)[0]
    assert rows.size > 0
    # Only the caption, below every tile, changes.
    car = np.all(low == name2label["car"].color, axis=2)
    assert rows.min() > np.nonzero(car.any(axis=1))[0].max()


def test_image_panel_has_the_seed_figures_and_an_automatic_tile() -> None:
    scene = _scene()
    # tile_height=H keeps the image-sized tiles unscaled, so drawn colours stay exact.
    base = image_panel(**scene, scores=None, tile_height=H, columns=3)
    auto = image_panel(
        **scene, scores=None, auto_masks=[scene["gt_binary"]], tile_height=H, columns=3
    )
    assert auto.shape[0] > base.shape[0]  # a seventh tile starts a third row
    assert np.all(base == name2label["car"].color, axis=2).any()  # GT rendered from labelIds
    assert np.all(base == BOX_COLOR, axis=2).any()  # the prompt box on the predicted mask
    without = dict(scene, gt_color=None, gt_binary=None, stylized=None, composite=None)
    assert image_panel(**without, scores=None, tile_height=H).shape[1] < base.shape[1]
    bad = dict(scene, pred_mask=np.zeros((H, W + 2), dtype=bool))
    with pytest.raises(InputError, match="predicted mask"):
        image_panel(**bad, scores=None)


def test_mask_to_rgb_is_white_on_black() -> None:
    mask = np.zeros((H, W), dtype=bool)
    mask[5:9, 5:9] = True
    rgb = mask_to_rgb(mask)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert (rgb[mask] == 255).all() and (rgb[~mask] == 0).all()
