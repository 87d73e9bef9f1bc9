"""The offline GrabCut segmenter: prompted masks, fallbacks, post-processing, automatic masks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from segstyle_core.cityscapes import Instance, instances_from_ids, list_cities, sample_city
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import read_label_map, read_rgb
from segstyle_core.metrics import iou
from segstyle_core.prompts.from_gt import prompts_from_instances
from segstyle_core.segment.base import Prompt
from segstyle_core.segment.grabcut import GrabCutSegmenter, OversegmentOptions

GRAY, RED, BLUE = (120, 120, 120), (200, 30, 30), (30, 30, 200)


def _paint(
    image: np.ndarray, region: tuple[slice, slice], colour: tuple[int, int, int], seed: int
) -> None:
    """Fill ``region`` of ``image`` with ``colour`` plus Gaussian noise (a textured patch)."""
    rows, cols = region
    shape = image[rows, cols].shape
    noise = np.random.default_rng(seed).normal(0, 12, shape)
    image[rows, cols] = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def _region_mask(region: tuple[slice, slice], shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[region] = True
    return mask


RED_SQUARE = (slice(20, 44), slice(12, 32))
BLUE_SQUARE = (slice(20, 44), slice(32, 52))


@pytest.fixture
def two_squares() -> np.ndarray:
    """64×64 noisy gray image with a red and a blue 24×20 patch side by side."""
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    _paint(image, (slice(None), slice(None)), GRAY, 0)
    _paint(image, RED_SQUARE, RED, 1)
    _paint(image, BLUE_SQUARE, BLUE, 2)
    return image


def test_box_negative_and_positive_points(two_squares: np.ndarray) -> None:
    red, blue = _region_mask(RED_SQUARE), _region_mask(BLUE_SQUARE)
    box = (8.0, 16.0, 56.0, 48.0)
    segmenter = GrabCutSegmenter()
    both, no_blue, red_point, red_and_blue_points = segmenter.segment(
        two_squares,
        [
            Prompt(box=box),
            Prompt(box=box, points=((42.0, 32.0),), point_labels=(0,)),
            Prompt(points=((22.0, 32.0),), point_labels=(1,)),
            Prompt(points=((22.0, 32.0), (42.0, 32.0)), point_labels=(1, 1)),
        ],
    )
    assert iou(both.mask, red | blue) > 0.9
    assert iou(no_blue.mask, red) > 0.9 and not (no_blue.mask & blue).any()
    assert iou(red_point.mask, red) > 0.9
    assert iou(red_and_blue_points.mask, red | blue) > 0.9
    assert all(p.score == 1.0 and p.notes == () for p in (both, no_blue, red_point))


def test_tiny_box_falls_back_to_the_box(two_squares: np.ndarray) -> None:
    (prediction,) = GrabCutSegmenter().segment(two_squares, [Prompt(box=(30.0, 30.0, 32.5, 33.0))])
    assert prediction.mask.sum() == 3 * 3 and prediction.mask[30:33, 30:33].all()
    assert prediction.score == 0.0
    assert prediction.notes[0] == "fallback:box"


def test_whole_image_box_has_no_background_and_falls_back(two_squares: np.ndarray) -> None:
    (prediction,) = GrabCutSegmenter().segment(two_squares, [Prompt(box=(0.0, 0.0, 64.0, 64.0))])
    assert prediction.mask.all()
    assert prediction.notes[0] == "fallback:box" and "grabcut failed" in prediction.notes[1]


def test_components_and_holes() -> None:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    _paint(image, (slice(None), slice(None)), GRAY, 0)
    _paint(image, (slice(10, 50), slice(8, 40)), RED, 1)  # large patch with a gray hole
    _paint(image, (slice(24, 34), slice(20, 28)), GRAY, 2)
    _paint(image, (slice(20, 30), slice(46, 56)), RED, 3)  # small separate patch
    large = _region_mask((slice(10, 50), slice(8, 40)))
    hole = _region_mask((slice(24, 34), slice(20, 28)))
    small = _region_mask((slice(20, 30), slice(46, 56)))
    box = Prompt(box=(4.0, 6.0, 60.0, 54.0))
    with_hole_point = Prompt(box=box.box, points=((24.0, 29.0),), point_labels=(0,))
    small_point = Prompt(box=box.box, points=((50.0, 25.0),), point_labels=(1,))

    segmenter = GrabCutSegmenter(center_prior=0)  # the prior would bridge the gap to `small`
    filled, open_hole, small_only = (
        p.mask for p in segmenter.segment(image, [box, with_hole_point, small_point])
    )
    assert iou(filled, large) > 0.9 and not (filled & small).any()
    assert iou(open_hole, large & ~hole) > 0.9
    assert iou(small_only, small) > 0.9
    raw = GrabCutSegmenter(center_prior=0, keep_largest_component=False, fill_holes=False)
    (everything,) = raw.segment(image, [box])
    assert iou(everything.mask, (large & ~hole) | small) > 0.9


def test_center_prior_stops_the_collapse_onto_a_small_part() -> None:
    """A gray body on a slightly lighter gray ground, with a bright plate and red lights."""
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    _paint(image, (slice(None), slice(None)), GRAY, 0)
    _paint(image, (slice(20, 44), slice(16, 48)), (100, 100, 100), 1)
    _paint(image, (slice(34, 38), slice(28, 36)), (230, 230, 230), 2)
    _paint(image, (slice(26, 30), slice(18, 22)), RED, 3)
    _paint(image, (slice(26, 30), slice(42, 46)), RED, 4)
    body = _region_mask((slice(20, 44), slice(16, 48)))
    prompts = [Prompt(box=(16.0, 20.0, 48.0, 44.0))]
    (collapsed,) = GrabCutSegmenter(center_prior=0).segment(image, prompts)
    (anchored,) = GrabCutSegmenter(center_prior=0.7).segment(image, prompts)
    assert iou(collapsed.mask, body) < 0.2
    assert iou(anchored.mask, body) > 0.5
    assert anchored.mask[32, 32] and not anchored.mask[~body].any()


def test_segment_is_deterministic(two_squares: np.ndarray) -> None:
    prompts = [Prompt(box=(8.0, 16.0, 56.0, 48.0))]
    first = GrabCutSegmenter(seed=7).segment(two_squares, prompts)[0].mask
    assert np.array_equal(first, GrabCutSegmenter(seed=7).segment(two_squares, prompts)[0].mask)


def test_bad_prompts_and_images_raise(two_squares: np.ndarray) -> None:
    segmenter = GrabCutSegmenter()
    with pytest.raises(InputError, match="prompt 1: box .* outside"):
        segmenter.segment(two_squares, [Prompt(box=(1, 1, 9, 9)), Prompt(box=(70, 1, 90, 9))])
    with pytest.raises(InputError, match="inverted"):
        segmenter.segment(two_squares, [Prompt(box=(30, 1, 9, 9))])
    with pytest.raises(InputError, match="no foreground point"):
        segmenter.segment(two_squares, [Prompt(points=((5.0, 5.0),), point_labels=(0,))])
    with pytest.raises(InputError, match="H×W×3 uint8"):
        segmenter.segment(two_squares.astype(np.float32), [Prompt(box=(1, 1, 9, 9))])
    with pytest.raises(ConfigError, match="iterations"):
        GrabCutSegmenter(iterations=0)
    with pytest.raises(ConfigError, match="method"):
        OversegmentOptions(method="watershed")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_generate_records_tile_the_image(
    two_squares: np.ndarray, method: Literal["felzenszwalb", "slic"]
) -> None:
    options = OversegmentOptions(method=method, scale=100, min_size=20, n_segments=16)
    records = GrabCutSegmenter(auto_options=options).generate(two_squares)
    assert len(records) >= 3
    areas = [record["area"] for record in records]
    assert areas == sorted(areas, reverse=True)
    coverage = np.zeros((64, 64), dtype=int)
    for record in records:
        mask = record["segmentation"]
        assert mask.shape == (64, 64) and mask.dtype == bool
        assert record["area"] == mask.sum()
        x, y, w, h = record["bbox"]
        ys, xs = np.nonzero(mask)
        assert [x, y, w, h] == [xs.min(), ys.min(), xs.max() - x + 1, ys.max() - y + 1]
        ((px, py),) = record["point_coords"]
        assert mask[py, px]
        assert record["crop_box"] == [0, 0, 64, 64]
        assert 0.0 <= record["predicted_iou"] <= 1.0 and 0.0 <= record["stability_score"] <= 1.0
        coverage += mask
    assert (coverage == 1).all()


def test_generate_min_area_and_max_masks(two_squares: np.ndarray) -> None:
    options = OversegmentOptions(scale=100, min_size=20)
    every = GrabCutSegmenter(auto_options=options).generate(two_squares)
    big = OversegmentOptions(scale=100, min_size=20, min_area=300, max_masks=2)
    kept = GrabCutSegmenter(auto_options=big).generate(two_squares)
    expected = [r["area"] for r in every if r["area"] >= 300][:2]
    assert [r["area"] for r in kept] == expected and len(kept) <= 2


def _demo_cars(demo_root: Path) -> Iterator[tuple[np.ndarray, list[Prompt], list[Instance]]]:
    """``(image, box prompts, their car instances)`` per frame of the demo dataset."""
    for city in list_cities(demo_root, "train"):
        for frame in sample_city(demo_root, "train", city).frames:
            assert frame.instance_ids_path is not None
            instances = instances_from_ids(read_label_map(frame.instance_ids_path), ["car"])
            kept = [instance for instance in instances if instance.area >= 100]
            prompts = prompts_from_instances(instances, min_area=100)
            assert [p.instance_id for p in prompts] == [i.instance_id for i in kept]
            yield read_rgb(frame.image_path), prompts, kept


def test_collapse_guard_stops_iterating(demo_root: Path) -> None:
    """``min_box_fill=1`` rejects every iteration after the first that leaves box pixels out."""
    image, prompts, _ = next(_demo_cars(demo_root))

    def masks(segmenter: GrabCutSegmenter) -> list[np.ndarray]:
        return [prediction.mask for prediction in segmenter.segment(image, prompts)]

    first = masks(GrabCutSegmenter(iterations=1))
    unguarded = masks(GrabCutSegmenter(iterations=5, min_box_fill=0))
    strict = masks(GrabCutSegmenter(iterations=5, min_box_fill=1))
    assert any(not np.array_equal(a, b) for a, b in zip(first, unguarded, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(first, strict, strict=True))


def test_grabcut_beats_the_box_on_demo_cars(demo_root: Path) -> None:
    """On the demo dataset's cars GrabCut's mask fits each car better than its own box does."""
    segmenter = GrabCutSegmenter()
    grabcut_ious, box_ious, fallbacks = [], [], 0
    for image, prompts, instances in _demo_cars(demo_root):
        predictions = segmenter.segment(image, prompts)
        for instance, prediction in zip(instances, predictions, strict=True):
            box_mask = np.zeros_like(instance.mask)
            x0, y0, x1, y1 = instance.box
            box_mask[y0:y1, x0:x1] = True
            grabcut_ious.append(iou(prediction.mask, instance.mask))
            box_ious.append(iou(box_mask, instance.mask))
            fallbacks += bool(prediction.notes)
    assert len(grabcut_ious) >= 10
    print(
        f"\n{len(grabcut_ious)} demo cars ({fallbacks} box fallbacks): mean IoU grabcut "
        f"{np.mean(grabcut_ious):.3f} vs box-as-mask {np.mean(box_ious):.3f}"
    )
    assert np.mean(grabcut_ious) > np.mean(box_ious)
