"""Several styles in one run (issue #15): paint plans, the layered composite stage, a style per
photo region, a style per dataset class, the CLI's ``--style`` pairing and the refusals.

Everything runs for real on tiny images with the offline backends (GrabCut, feed-forward).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from segstyle_core.composite import resize_to
from segstyle_core.config import (
    CompositeConfig,
    DatasetSelection,
    OutputConfig,
    PhotoPrompts,
    PromptConfig,
)
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import read_rgb, write_png
from segstyle_core.masks import load_masks, save_masks
from segstyle_core.paint import (
    PaintLayer,
    PaintPlan,
    check_paint_settings,
    plan_by_class,
    plan_by_region,
    region_styles,
)
from segstyle_core.photo import photo_prompts, stylize_photo
from segstyle_core.rle import decode_mask
from segstyle_core.segment import SegmenterConfig
from segstyle_core.segment.base import MaskPrediction, Prompt
from segstyle_core.stagecache import StageRecord
from segstyle_core.stages.composite import composite
from segstyle_core.stages.segment import segment
from segstyle_core.stages.stylize import StylizeRecord, stylize
from segstyle_core.styles import make_geometric_abstraction
from segstyle_core.stylize import StylizerConfig
from segstyle_core.stylize.feedforward import MIN_SIDE
from tests.flow_params import offline_params

H, W = 48, 64
#: Two boxes around the two objects of :func:`photo`, far enough apart not to overlap.
BOX_A, BOX_B = "4,6,29,42", "35,6,60,42"
SEGMENTER = SegmenterConfig(backend="grabcut")
STYLIZER = StylizerConfig(backend="feedforward")


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 64×48 photo with two objects, two geometric styles, a flat-colour style of the
    feed-forward minimum size and one just under it."""
    folder = tmp_path_factory.mktemp("paint files")
    rng = np.random.default_rng(7)
    photo = np.clip(rng.normal(128, 10, (H, W, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:H, :W]
    left = ((xx - 16) / 9.0) ** 2 + ((yy - 24) / 14.0) ** 2 <= 1.0
    right = ((xx - 47) / 9.0) ** 2 + ((yy - 24) / 14.0) ** 2 <= 1.0
    photo[left] = (200, 40, 30)
    photo[right] = (30, 60, 210)
    paths = {
        "photo": write_png(folder / "photo.png", photo),
        "geo1": write_png(folder / "geo one.png", make_geometric_abstraction((48, 48), seed=1)),
        "geo2": write_png(folder / "geo two.png", make_geometric_abstraction((48, 48), seed=2)),
    }
    flat = np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8)
    flat[:] = (20, 200, 60)
    paths["flat"] = write_png(folder / "flat.png", flat)
    paths["tiny"] = write_png(folder / "tiny.png", flat[: MIN_SIDE - 1, : MIN_SIDE - 1])
    return paths


def _entries(cache: Path, stage: str) -> int:
    """Stored results of ``stage`` in ``cache`` (``<stage>/<key[:2]>/<key>/record.json``)."""
    return len(list((cache / stage).glob("*/*/record.json")))


def _prompts(photo: Path, *boxes: str) -> list[Prompt]:
    return photo_prompts(str(photo), PhotoPrompts(boxes=boxes))


def _masks(photo: Path, prompts: list[Prompt], cache: Path) -> list[np.ndarray]:
    """The per-prompt masks of the photo from the segment stage's (cached) result."""
    record = segment.run(cache, str(photo), [p.as_dict() for p in prompts], False, SEGMENTER)
    assert record.cached  # the stage stylize_photo ran, with the same key
    return [p.mask for p in load_masks(record.path("masks"))]


def _painting(photo: Path, style: Path, cache: Path, size: tuple[int, int]) -> np.ndarray:
    """The whole-photo stylization in ``style`` the stylize stage stored, at ``size``."""
    record = stylize.run(cache, str(photo), str(style), STYLIZER)
    assert record.cached  # computed once by the run under test, never here
    return resize_to(read_rgb(record.path("stylized")), size)


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels (``K×3``) whose colours differ by more than 10 in some channel."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > 10).mean())


# --- 1. plan_by_class -------------------------------------------------------------------------


def test_plain_style_only_is_one_layer_with_every_mask() -> None:
    stylizer = StylizerConfig(backend="feedforward", style="plain.png")
    plan = plan_by_class(["car", "person", None, "car"], ("car", "person"), stylizer)
    assert plan == PaintPlan(("plain.png",), (PaintLayer(0, (0, 1, 2, 3)),))


def test_unstyled_classes_paint_first_then_each_styled_class_in_the_runs_order() -> None:
    stylizer = StylizerConfig(
        backend="feedforward",
        style="plain.png",
        class_styles={"person": "person.png", "car": "car.png"},
    )
    labels = ["person", "car", "rider", "car", None, "person"]
    plan = plan_by_class(labels, ("car", "person", "rider"), stylizer)
    assert plan.styles == ("plain.png", "car.png", "person.png")
    assert plan.layers == (
        PaintLayer(0, (2, 4)),  # rider and the prompt without a class: plain style
        PaintLayer(1, (1, 3)),  # car
        PaintLayer(2, (0, 5)),  # person, over car where they overlap
    )
    swapped = plan_by_class(labels, ("person", "car", "rider"), stylizer)
    assert swapped.styles == ("plain.png", "person.png", "car.png")
    assert [layer.masks for layer in swapped.layers] == [(2, 4), (0, 5), (1, 3)]


def test_consecutive_layers_of_one_style_merge_into_one() -> None:
    stylizer = StylizerConfig(
        backend="feedforward", style="plain.png", class_styles={"car": "plain.png"}
    )
    plan = plan_by_class(["car", "person", "car"], ("car", "person"), stylizer)
    assert plan.styles == ("plain.png",)
    assert plan.layers == (PaintLayer(0, (0, 1, 2)),)
    assert stylizer.style_paths() == ["plain.png"]
    # not consecutive: a, b, a stays three layers, so b's region keeps its place in the order
    alternating = plan_by_region(["a.png", "b.png", "a.png"])
    assert [layer.style for layer in alternating.layers] == [0, 1, 0]


def test_class_names_match_case_insensitively() -> None:
    stylizer = StylizerConfig(
        backend="feedforward", style="plain.png", class_styles={" Car ": "car.png"}
    )
    assert stylizer.class_styles == {"car": "car.png"}
    assert stylizer.style_for("CAR") == "car.png" and stylizer.style_for(None) == "plain.png"
    plan = plan_by_class(["Car", "PERSON", "car"], ("CAR", "Person"), stylizer)
    assert plan == PaintPlan(("plain.png", "car.png"), (PaintLayer(0, (1,)), PaintLayer(1, (0, 2))))


def test_no_mask_paints_nothing_in_object_mode_and_everything_in_background() -> None:
    stylizer = StylizerConfig(
        backend="feedforward", style="plain.png", class_styles={"car": "car.png"}
    )
    # object mode: nothing to paint, so nothing is stylized (an ROI of no mask would fail)
    assert plan_by_class([], ("car", "person"), stylizer) == PaintPlan((), ())
    assert plan_by_class([], ("car",), stylizer.changed(class_styles={}), "background") == (
        PaintPlan(("plain.png",), (PaintLayer(0, ()),))
    )
    # only cars: the plain layer has no mask, so the plain style is not stylized at all
    assert plan_by_class(["car", "car"], ("car", "person"), stylizer) == PaintPlan(
        ("car.png",), (PaintLayer(0, (0, 1)),)
    )


@pytest.mark.parametrize("styles", [{"": "a.png"}, {"car": " "}])
def test_a_per_class_style_needs_a_class_and_an_image(styles: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="CLASS=IMAGE"):
        StylizerConfig(backend="feedforward", class_styles=styles)


# --- 2. plan_by_region and region_styles --------------------------------------------------------


def test_regions_paint_in_box_order_and_share_a_repeated_style() -> None:
    plan = plan_by_region(["a.png", "b.png", "a.png"])
    assert plan.styles == ("a.png", "b.png")
    assert plan.layers == (PaintLayer(0, (0,)), PaintLayer(1, (1,)), PaintLayer(0, (2,)))


def test_styles_pair_with_boxes_and_a_points_region_gets_the_first(
    files: dict[str, Path],
) -> None:
    stylizer = StylizerConfig(backend="feedforward", style="plain.png")
    given = PhotoPrompts(boxes=(BOX_A, BOX_B), points=("30,24",), styles=("a.png", "b.png"))
    regions = len(photo_prompts(str(files["photo"]), given))
    assert regions == 3  # two boxes, and the points as a region of their own
    assert region_styles(given, regions, stylizer, "object") == ["a.png", "b.png", "a.png"]
    unstyled = PhotoPrompts(boxes=(BOX_A, BOX_B))
    assert region_styles(unstyled, 2, stylizer, "object") == ["plain.png", "plain.png"]
    # one box with points is one region
    one = PhotoPrompts(boxes=(BOX_A,), points=("16,24",), styles=("a.png",))
    assert region_styles(one, len(photo_prompts(str(files["photo"]), one)), stylizer, "object") == [
        "a.png"
    ]


def test_region_styles_refuses_a_wrong_count_and_several_styles_in_background() -> None:
    stylizer = StylizerConfig(backend="feedforward", style="plain.png")
    three = PhotoPrompts(boxes=(BOX_A, BOX_B, "1,1,20,20"), styles=("a.png", "b.png"))
    with pytest.raises(ConfigError, match=r"^prompts.styles gives 2 for 3 boxes \(prompts.boxes\)"):
        region_styles(three, 3, stylizer, "object")
    two = PhotoPrompts(boxes=(BOX_A, BOX_B), styles=("a.png", "b.png"))
    with pytest.raises(ConfigError, match="or set composite.mode=object$"):
        region_styles(two, 2, stylizer, "background")
    same = PhotoPrompts(boxes=(BOX_A, BOX_B), styles=("a.png", "a.png"))
    assert region_styles(same, 2, stylizer, "background") == ["a.png", "a.png"]
    assert region_styles(same, 3, stylizer, "background") == ["a.png"] * 3  # + a points region
    # a photo has no classes: per-class styles (which the flow could be given) are refused
    with pytest.raises(ConfigError, match="^stylizer.class_styles needs classes"):
        region_styles(two, 2, stylizer.changed(class_styles={"car": "c.png"}), "object")


# --- 3. the composite stage, layer by layer ---------------------------------------------------


def test_composite_stage_paints_layers_in_order_later_over_earlier(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    original = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    image = write_png(tmp_path / "image.png", original)
    mask_a = np.zeros((H, W), bool)
    mask_a[5:40, 4:36] = True
    mask_b = np.zeros((H, W), bool)
    mask_b[10:45, 26:60] = True
    mask_c = np.zeros((H, W), bool)
    mask_c[42:47, 2:10] = True
    npz = save_masks(
        tmp_path / "masks.npz", [MaskPrediction(m, 1.0) for m in (mask_a, mask_b, mask_c)]
    )
    masks = StageRecord(outputs={"masks": str(npz)}, cache_root=str(tmp_path))
    # paintings at working sizes smaller than the image, as a stylizer returns them
    paint_a = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    paint_b = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    stylized = [
        StylizeRecord(
            outputs={"stylized": str(write_png(tmp_path / f"{name}.png", paint))},
            cache_root=str(tmp_path),
        )
        for name, paint in (("a", paint_a), ("b", paint_b))
    ]
    big_a, big_b = resize_to(paint_a, (H, W)), resize_to(paint_b, (H, W))
    cache = tmp_path / "cache"

    def paint(layers: tuple[PaintLayer, ...]) -> tuple[np.ndarray, StageRecord]:
        record = composite.run(cache, str(image), stylized, masks, layers, CompositeConfig())
        return read_rgb(record.path("composite")), record

    a_then_b = (PaintLayer(0, (0, 2)), PaintLayer(1, (1,)))
    result, first = paint(a_then_b)
    only_a, only_b, both = mask_a & ~mask_b, mask_b & ~mask_a, mask_a & mask_b
    outside = ~(mask_a | mask_b | mask_c)
    assert result.shape == (H, W, 3) and not first.cached
    assert both.any() and only_a.any() and only_b.any()
    assert np.array_equal(result[only_a], big_a[only_a])
    assert np.array_equal(result[mask_c], big_a[mask_c])  # a layer paints the union of its masks
    assert np.array_equal(result[only_b], big_b[only_b])
    assert np.array_equal(result[both], big_b[both])  # the later layer covers the earlier
    assert np.array_equal(result[outside], original[outside])
    assert _differ(big_a[both], big_b[both]) > 0.5

    swapped, second = paint((PaintLayer(1, (1,)), PaintLayer(0, (0, 2))))
    assert not second.cached and second.cache_key != first.cache_key  # the order is in the key
    assert np.array_equal(swapped[both], big_a[both])
    assert np.array_equal(swapped[only_b], big_b[only_b])

    again, third = paint(a_then_b)
    assert third.cached and third.cache_key == first.cache_key
    assert np.array_equal(again, result)


# --- 4. stylize_photo: a style per region -----------------------------------------------------


def test_each_photo_region_is_painted_in_its_own_style(
    files: dict[str, Path], tmp_path: Path
) -> None:
    photo, cache = files["photo"], tmp_path / "cache"
    prompts = _prompts(photo, BOX_A, BOX_B)
    record = stylize_photo(
        str(photo),
        prompts,
        [str(files["geo1"]), str(files["flat"])],
        SEGMENTER,
        STYLIZER,
        CompositeConfig(),
        str(cache),
    )
    result = read_rgb(record.path("composite"))
    original = read_rgb(photo)
    assert result.shape == original.shape == (H, W, 3)
    mask_a, mask_b = _masks(photo, prompts, cache)
    only_a, only_b = mask_a & ~mask_b, mask_b & ~mask_a
    assert only_a.sum() > 50 and only_b.sum() > 50
    first = _painting(photo, files["geo1"], cache, (H, W))
    second = _painting(photo, files["flat"], cache, (H, W))
    assert _differ(first[only_a], second[only_a]) > 0.3  # the two styles are told apart
    assert _differ(first[only_b], second[only_b]) > 0.3
    assert np.array_equal(result[only_a], first[only_a])
    assert np.array_equal(result[only_b], second[only_b])
    outside = ~(mask_a | mask_b)
    assert np.array_equal(result[outside], original[outside])
    assert _entries(cache, "stylize") == 2

    # region A alone in its style: the same pixels as in the two-style picture
    single = stylize_photo(
        str(photo),
        prompts[:1],
        [str(files["geo1"])],
        SEGMENTER,
        STYLIZER,
        CompositeConfig(),
        str(cache),
    )
    alone = read_rgb(single.path("composite"))
    assert np.array_equal(alone[only_a], result[only_a])
    assert np.array_equal(alone[only_b], original[only_b])
    assert _entries(cache, "stylize") == 2  # the painting of region A was reused


def test_a_second_photo_call_is_all_cached(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo, cache = files["photo"], tmp_path / "cache"
    prompts = _prompts(photo, BOX_A, BOX_B)
    styles = [str(files["geo2"]), str(files["geo1"])]

    def run() -> Any:
        return stylize_photo(
            str(photo), prompts, styles, SEGMENTER, STYLIZER, CompositeConfig(), str(cache)
        )

    first = run()
    counts = {s: _entries(cache, s) for s in ("segment", "stylize", "composite")}
    assert counts == {"segment": 1, "stylize": 2, "composite": 1} and not first.cached

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{type(self).__name__}.build called: a stage was recomputed")

    monkeypatch.setattr(StylizerConfig, "build", refuse)
    monkeypatch.setattr(SegmenterConfig, "build", refuse)
    second = run()
    assert second.cached and second.cache_key == first.cache_key
    assert second.sha256 == first.sha256
    assert {s: _entries(cache, s) for s in counts} == counts


def test_two_regions_in_one_style_are_stylized_once(files: dict[str, Path], tmp_path: Path) -> None:
    photo, cache = files["photo"], tmp_path / "cache"
    prompts = _prompts(photo, BOX_A, BOX_B)
    style = str(files["geo2"])
    record = stylize_photo(
        str(photo), prompts, [style, style], SEGMENTER, STYLIZER, CompositeConfig(), str(cache)
    )
    assert _entries(cache, "stylize") == 1
    result = read_rgb(record.path("composite"))
    mask_a, mask_b = _masks(photo, prompts, cache)
    painting = _painting(photo, files["geo2"], cache, (H, W))
    union = mask_a | mask_b
    assert np.array_equal(result[union], painting[union])
    assert np.array_equal(result[~union], read_rgb(photo)[~union])


def test_background_mode_keeps_every_photo_region_in_one_style(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """Background mode paints what lies outside every region: each region stays original."""
    photo, cache = files["photo"], tmp_path / "cache"
    prompts = _prompts(photo, BOX_A, BOX_B)
    style = str(files["geo1"])
    settings = CompositeConfig(mode="background")
    record = stylize_photo(
        str(photo), prompts, [style, style], SEGMENTER, STYLIZER, settings, str(cache)
    )
    result = read_rgb(record.path("composite"))
    mask_a, mask_b = _masks(photo, prompts, cache)
    union = mask_a | mask_b
    painting = _painting(photo, files["geo1"], cache, (H, W))
    original = read_rgb(photo)
    assert _differ(painting[union], original[union]) > 0.3
    assert np.array_equal(result[~union], painting[~union])
    assert np.array_equal(result[mask_a], original[mask_a])
    assert np.array_equal(result[mask_b], original[mask_b])


# --- 5. the command line ------------------------------------------------------------------------


def test_split_styles_tells_plain_images_from_class_pairs(tmp_path: Path) -> None:
    from segstyle.flows.options import split_styles

    assert split_styles([]) == ([], {})
    assert split_styles(["a.png", "Car=c.png", "b.png", "person=p.png"]) == (
        ["a.png", "b.png"],
        {"car": "c.png", "person": "p.png"},
    )
    odd = tmp_path / "night=day.png"
    odd.write_bytes(b"x")
    assert split_styles([str(odd)]) == ([str(odd)], {})  # an existing file is a plain image
    odd.unlink()
    plain, per_class = split_styles([str(odd)])
    assert plain == [] and list(per_class.values()) == ["day.png"]
    with pytest.raises(ConfigError, match="already has a style"):
        split_styles(["car=a.png", "CAR=b.png"])


def _cli(*args: str) -> int:
    from segstyle.flows.cli import main

    return main(list(args))


def _photo_cli(files: dict[str, Path], tmp_path: Path, *extra: str) -> list[str]:
    return [
        "stylize",
        str(files["photo"]),
        *("--segmenter", "grabcut", "--stylizer", "feedforward"),
        *("--out", str(tmp_path / "work"), "-o", str(tmp_path / "out.png")),
        *extra,
    ]


def test_cli_stylize_pairs_each_style_with_its_box(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = files["photo"]
    styles = [str(files["geo1"]), str(files["flat"])]
    args = _photo_cli(files, tmp_path, "--box", BOX_A, "--style", styles[0])
    status = _cli(*args, "--box", BOX_B, "--style", styles[1])
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0 and out[-1] == str(tmp_path / "out.png")
    written = read_rgb(tmp_path / "out.png")
    assert written.shape == read_rgb(photo).shape
    # the same picture as the library call with the styles paired in box order (a cache hit)
    cache = str(tmp_path / "work" / "cache")
    prompts = _prompts(photo, BOX_A, BOX_B)
    paired = stylize_photo(
        str(photo), prompts, styles, SEGMENTER, STYLIZER, CompositeConfig(), cache
    )
    assert paired.cached and np.array_equal(read_rgb(paired.path("composite")), written)
    swapped = stylize_photo(
        str(photo), prompts, styles[::-1], SEGMENTER, STYLIZER, CompositeConfig(), cache
    )
    assert not swapped.cached
    assert not np.array_equal(read_rgb(swapped.path("composite")), written)

    # one --style for two boxes paints both in it
    one = _photo_cli(files, tmp_path, "--box", BOX_A, "--box", BOX_B, "--style", styles[0])
    assert _cli(*one) == 0
    both = stylize_photo(
        str(photo), prompts, [styles[0]] * 2, SEGMENTER, STYLIZER, CompositeConfig(), cache
    )
    assert both.cached
    assert np.array_equal(read_rgb(tmp_path / "out.png"), read_rgb(both.path("composite")))


def test_with_an_roi_each_style_stylizes_only_the_box_of_its_own_regions(
    files: dict[str, Path], tmp_path: Path
) -> None:
    from segstyle_core.roi import roi_box

    photo, cache = files["photo"], tmp_path / "cache"
    prompts = _prompts(photo, BOX_A, BOX_B)
    settings = CompositeConfig(roi_margin_px=2)
    styles = [str(files["geo1"]), str(files["flat"])]
    record = stylize_photo(str(photo), prompts, styles, SEGMENTER, STYLIZER, settings, str(cache))
    original, result = read_rgb(photo), read_rgb(record.path("composite"))
    mask_a, mask_b = _masks(photo, prompts, cache)
    stylized = sorted((cache / "stylize").glob("*/*/stylized.png"))
    assert len(stylized) == 2
    boxes = [roi_box(mask, 2, 0.0) for mask in (mask_a, mask_b)]
    for path in stylized:
        painting = read_rgb(path)
        changed = np.abs(painting.astype(int) - original.astype(int)).max(axis=-1) > 0
        # each painting is the photo outside one region's box (+ margin), never both boxes
        inside = [changed[y0:y1, x0:x1].mean() > 0.3 for x0, y0, x1, y1 in boxes]
        assert sum(inside) == 1, inside
        x0, y0, x1, y1 = boxes[inside.index(True)]
        outside = np.ones(changed.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert not changed[outside].any()
    only_a = mask_a & ~mask_b
    assert not np.array_equal(result[only_a], original[only_a])  # region A was painted


@pytest.mark.usefixtures("prefect_api")
def test_the_stylize_image_flow_paints_each_box_in_its_style(
    files: dict[str, Path], tmp_path: Path
) -> None:
    from segstyle.flows.single import stylize_image
    from segstyle_core.config import OutputConfig

    photo, out = files["photo"], tmp_path / "work"
    styles = (str(files["geo1"]), str(files["flat"]))
    given = PhotoPrompts(boxes=(BOX_A, BOX_B), styles=styles)
    written = stylize_image(
        str(photo),
        str(tmp_path / "flow.png"),
        given,
        SEGMENTER,
        STYLIZER,
        CompositeConfig(),
        OutputConfig(out=str(out)),
    )
    # the flow ran the same stages as the in-process photo path: its composite is a cache hit
    same = stylize_photo(
        str(photo),
        _prompts(photo, BOX_A, BOX_B),
        list(styles),
        SEGMENTER,
        STYLIZER,
        CompositeConfig(),
        str(out / "cache"),
    )
    assert same.cached and _entries(out / "cache", "stylize") == 2
    assert np.array_equal(read_rgb(written), read_rgb(same.path("composite")))
    with pytest.raises(ConfigError, match="prompts.styles gives 1 for 2 boxes"):
        stylize_image(
            str(photo),
            str(tmp_path / "bad.png"),
            PhotoPrompts(boxes=(BOX_A, BOX_B), styles=styles[:1]),
            SEGMENTER,
            STYLIZER,
        )


def _style_names(files: dict[str, Path], tmp_path: Path) -> dict[str, str]:
    """The test files by name for ``str.format``, and ``missing``: a path that does not exist."""
    return {k: str(v) for k, v in files.items()} | {"missing": str(tmp_path / "gone.png")}


def _assert_one_line_refusal(
    status: int,
    capsys: pytest.CaptureFixture[str],
    needles: tuple[str, ...],
    names: dict[str, str],
) -> None:
    """Exit 2 with one ``segstyle: error:`` line holding every needle (formatted with names)."""
    error = capsys.readouterr().err.strip()
    assert status == 2, error
    assert error.startswith("segstyle: error: ") and "\n" not in error, error
    for needle in needles:
        assert needle.format(**names) in error, error


RUN_OPTIONS = (
    *("--city", "aachen", "--prompts", "gt-instances"),
    *("--segmenter", "grabcut", "--stylizer", "feedforward", "--limit", "1"),
)


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (("--classes", "car", "--style", "{geo1}", "--style", "{geo2}"), ("CLASS=IMAGE",)),
        (
            ("--classes", "car", "--style", "car={geo1}", "--style", "CAR={geo2}"),
            ("already has a style",),
        ),
        (("--classes", "car", "--style", "person={geo1}"), ("'person'", "add it to --classes")),
        (("--classes", "car", "--style", "car={geo1}", "--mode", "background"), ("--mode=object",)),
        (("--classes", "car,person", "--style", "car={missing}"), ("{missing}", "check the path")),
        (("--classes", "car,person", "--style", "person={tiny}"), ("{tiny}", "larger image")),
    ],
    ids=["two-plain", "class-twice", "class-not-selected", "background", "missing", "too-small"],
)
def test_run_refuses_bad_styles_in_one_line_before_any_work(
    files: dict[str, Path],
    demo_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    needles: tuple[str, ...],
) -> None:
    names = _style_names(files, tmp_path)
    out = tmp_path / "out"
    args = [a.format(**names) for a in extra]
    status = _cli("run", "--dataset", str(demo_root), *RUN_OPTIONS, *args, "--out", str(out))
    _assert_one_line_refusal(status, capsys, needles, names)
    assert not (out / "metrics").exists() and not (out / "cache").exists()


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (("--box", BOX_A, "--style", "car={geo1}"), ("a photo has no classes",)),
        (
            ("--box", BOX_A, "--box", BOX_B, "--box", "1,1,20,20")
            + ("--style", "{geo1}", "--style", "{geo2}"),
            ("gives 2 for 3 boxes (--box)",),
        ),
        (
            ("--box", BOX_A, "--box", BOX_B, "--style", "{geo1}", "--style", "{geo2}")
            + ("--mode", "background"),
            ("--mode=object",),
        ),
        (
            ("--box", BOX_A, "--box", BOX_B, "--style", "{geo1}", "--style", "{missing}"),
            ("{missing}", "check the path"),
        ),
        (("--box", BOX_A, "--style", "{tiny}"), ("{tiny}", "larger image")),
    ],
    ids=["class-pair", "count", "background", "missing-file", "too-small"],
)
def test_stylize_refuses_bad_styles_in_one_line_before_any_work(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    needles: tuple[str, ...],
) -> None:
    names = _style_names(files, tmp_path)
    status = _cli(*_photo_cli(files, tmp_path, *(a.format(**names) for a in extra)))
    _assert_one_line_refusal(status, capsys, needles, names)
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "work" / "cache").exists()


# --- 6. a dataset run with a style per class ----------------------------------------------------


def _task_run_names(flow_run_id: Any, task: str) -> list[str]:
    """The sorted names of a flow run's runs of ``task``, as the UI lists them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(run.name for run in runs if run.task_key.startswith(f"{task}-"))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_dataset_rows_name_their_class_style_and_a_rerun_is_cached(
    files: dict[str, Path], demo_root: Path, tmp_path: Path
) -> None:
    from segstyle.flows.dataset import segment_and_stylize

    plain, car = files["geo2"], files["flat"]
    out = tmp_path / "out"
    params = offline_params(demo_root, out, city="aachen", classes=("car", "person"), limit=1)
    stylizer = StylizerConfig(
        backend="feedforward", style=str(plain), class_styles={"car": str(car)}
    )
    params.update(stylizer=stylizer, composite=CompositeConfig())

    first = segment_and_stylize(**params, return_state=True)
    assert first.is_completed(), first.message
    rows = pd.read_parquet(first.result())
    assert rows["status"].eq("ok").all() and rows["image_id"].nunique() == 1
    assert set(rows["instance_class"]) == {"car", "person"}  # the frame holds both classes
    is_car = rows["instance_class"].eq("car")
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (plain, car)}
    assert rows.loc[is_car, "style_name"].eq(car.stem).all()
    assert rows.loc[is_car, "style_sha256"].eq(sha[car]).all()
    assert rows.loc[~is_car, "style_name"].eq(plain.stem).all()
    assert rows.loc[~is_car, "style_sha256"].eq(sha[plain]).all()
    assert not rows["cached_stylize"].any()
    assert _entries(out / "cache", "stylize") == 2  # one painting per distinct style
    image_id = rows["image_id"].iloc[0]
    assert _task_run_names(first.state_details.flow_run_id, "stylize") == sorted(
        f"stylize-{image_id}-{style.stem}" for style in (plain, car)
    )

    # the picture: person masks in the plain painting, car masks (painted later) in the car's
    image_path = Path(rows["image_path"].iloc[0])
    size = read_rgb(image_path).shape[:2]
    union = {
        cls: np.logical_or.reduce(
            [decode_mask(m) for m in rows.loc[rows["instance_class"] == cls, "mask_rle"]]
        )
        for cls in ("car", "person")
    }
    paintings = {}
    for style in (plain, car):
        record = stylize.run(out / "cache", str(image_path), str(style), stylizer)
        assert record.cached  # the flow's own painting
        paintings[style] = resize_to(read_rgb(record.path("stylized")), size)
    result = read_rgb(rows["composite_path"].iloc[0])
    person_only = union["person"] & ~union["car"]
    assert union["car"].any() and person_only.any()
    assert np.array_equal(result[union["car"]], paintings[car][union["car"]])
    assert np.array_equal(result[person_only], paintings[plain][person_only])
    outside = ~(union["car"] | union["person"])
    assert np.array_equal(result[outside], read_rgb(image_path)[outside])
    assert _differ(paintings[car][union["car"]], paintings[plain][union["car"]]) > 0.3

    second = segment_and_stylize(**params, return_state=True)
    assert second.is_completed(), second.message
    again = pd.read_parquet(second.result())
    for stage in ("gt", "segment", "stylize", "composite"):
        assert again[f"cached_{stage}"].eq(True).all(), stage
    assert again["style_name"].tolist() == rows["style_name"].tolist()
    assert _entries(out / "cache", "stylize") == 2


@pytest.mark.usefixtures("prefect_api")
def test_a_frame_without_a_matched_instance_is_left_unpainted_even_with_an_roi(
    demo_root: Path, tmp_path: Path
) -> None:
    from segstyle.flows.dataset import segment_and_stylize
    from segstyle_core.config import PromptConfig

    out = tmp_path / "out"
    params = offline_params(demo_root, out, city="aachen", classes=("truck",), limit=1)
    params.update(prompts=PromptConfig(source="auto"), composite=CompositeConfig(roi_margin_px=4))
    state = segment_and_stylize(**params, return_state=True)
    assert state.is_completed(), state.message
    (row,) = pd.read_parquet(state.result()).to_dict("records")  # no truck in the demo
    assert row["status"] == "ok" and row["gt_area"] == 0
    assert np.array_equal(read_rgb(row["composite_path"]), read_rgb(row["image_path"]))
    assert _entries(out / "cache", "stylize") == 0  # nothing to paint: nothing stylized


# --- 7. the preflight -------------------------------------------------------------------------


def _preflight(
    root: Path,
    out: Path,
    stylizer: StylizerConfig,
    mode: str = "object",
    classes: tuple[str, ...] = ("car",),
) -> Any:
    from segstyle_core.preflight import check_run_inputs

    return check_run_inputs(
        DatasetSelection(root=str(root), city="aachen", classes=classes, limit=1),
        PromptConfig(source="gt-instances"),
        SEGMENTER,
        stylizer,
        OutputConfig(out=str(out)),
        CompositeConfig(mode=mode),  # type: ignore[arg-type]
    )


def test_preflight_refuses_per_class_styles_that_cannot_apply(
    files: dict[str, Path], demo_root: Path, tmp_path: Path
) -> None:
    plain = str(files["geo1"])

    def styled(**class_styles: str) -> StylizerConfig:
        return StylizerConfig(backend="feedforward", style=plain, class_styles=class_styles)

    with pytest.raises(ConfigError, match="'person' is not among the run's classes"):
        _preflight(demo_root, tmp_path, styled(person=str(files["geo2"])))
    with pytest.raises(ConfigError, match="composite.mode=background paints what lies outside"):
        _preflight(demo_root, tmp_path, styled(car=str(files["geo2"])), mode="background")
    missing = tmp_path / "no such style.png"
    with pytest.raises(InputError) as info:
        _preflight(demo_root, tmp_path, styled(car=str(missing)))
    assert str(info.value).startswith(str(missing))
    with pytest.raises(InputError, match="larger image") as small:
        _preflight(demo_root, tmp_path, styled(car=str(files["tiny"])))
    assert str(small.value).startswith(str(files["tiny"]))

    segmenter, stylizer = _preflight(
        demo_root, tmp_path, styled(Person=str(files["geo2"])), classes=("car", "person")
    )
    assert segmenter.name == "grabcut" and stylizer is not None and stylizer.name == "feedforward"
    # without the run's classes only the mode is checked
    check_paint_settings(styled(bus=str(files["geo2"])), "object")
    with pytest.raises(ConfigError):
        check_paint_settings(styled(bus=str(files["geo2"])), "background")
