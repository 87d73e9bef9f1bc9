"""Cityscapes layout, sampling, label table, GT binarization and instances (on demo data)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import name2label
from PIL import Image

from segstyle_core import cityscapes
from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import read_label_map, read_rgb, write_png

CITIES = ("zurich", "aachen")
FRAMES = 3


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    return generate_demo_dataset(out, size=(128, 64), frames_per_city=FRAMES, cities=CITIES)


@pytest.fixture
def scratch_root(demo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the demo dataset that a test may damage."""
    return Path(shutil.copytree(demo_root, tmp_path / "copy"))


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- layout


def test_root_from_argument_or_environment(
    demo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cityscapes.resolve_root(str(demo_root)) == demo_root
    monkeypatch.setenv("CITYSCAPES_DATASET", str(demo_root))
    assert cityscapes.resolve_root(None) == demo_root
    assert cityscapes.list_cities(None, "train") == sorted(CITIES)


def test_root_without_leftimg8bit_names_root_and_layout(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        cityscapes.sample_city(tmp_path)
    message = _one_line(error)
    assert str(tmp_path) in message and "leftImg8bit" in message


def test_no_root_at_all_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    with pytest.raises(ConfigError, match="CITYSCAPES_DATASET"):
        cityscapes.resolve_root(None)


def test_cities_are_sorted_and_an_unknown_split_names_the_splits(demo_root: Path) -> None:
    assert cityscapes.list_cities(demo_root, "train") == sorted(CITIES)
    with pytest.raises(
        ConfigError, match="no split 'test' under leftImg8bit/; choose one of train$"
    ):
        cityscapes.list_cities(demo_root, "test")


def test_named_city_keeps_fine_frames_and_reports_the_bare_image(demo_root: Path) -> None:
    sample = cityscapes.sample_city(demo_root, split="train", city="zurich")
    assert sample.city == "zurich" and sample.split == "train"
    assert [f.image_id for f in sample.frames] == [f"zurich_{n:06d}_000019" for n in range(FRAMES)]
    for frame in sample.frames:
        assert frame.gt_path("auto") is not None and frame.city == "zurich"
        paths = (frame.image_path, frame.label_ids_path, frame.instance_ids_path, frame.color_path)
        assert all(p is not None and p.is_file() for p in (*paths, frame.polygons_path))
    bare = demo_root / "leftImg8bit/train/zurich/zurich_000003_000019_leftImg8bit.png"
    assert [path for path, _ in sample.skipped] == [str(bare)]
    assert "gtFine" in sample.skipped[0][1]


def test_unknown_city_lists_the_cities(demo_root: Path) -> None:
    with pytest.raises(ConfigError) as error:
        cityscapes.sample_city(demo_root, city="paris")
    assert all(city in _one_line(error) for city in CITIES)


def test_seed_fixes_the_city_and_seeds_reach_every_city(demo_root: Path) -> None:
    picked = set()
    for seed in range(12):
        sample = cityscapes.sample_city(demo_root, seed=seed)
        assert sample == cityscapes.sample_city(demo_root, seed=seed)
        picked.add(sample.city)
    assert picked == set(CITIES)


def test_limit_takes_a_seeded_sorted_subset(demo_root: Path) -> None:
    everything = cityscapes.sample_city(demo_root, city="aachen").frames
    subsets = set()
    for seed in range(10):
        frames = cityscapes.sample_city(demo_root, city="aachen", seed=seed, limit=2).frames
        ids = [f.image_id for f in frames]
        assert len(ids) == 2 and ids == sorted(ids) and set(frames) <= set(everything)
        assert frames == cityscapes.sample_city(demo_root, city="aachen", seed=seed, limit=2).frames
        subsets.add(tuple(ids))
    assert len(subsets) > 1
    assert cityscapes.sample_city(demo_root, city="aachen", limit=99).frames == everything
    with pytest.raises(ConfigError, match="limit"):
        cityscapes.sample_city(demo_root, city="aachen", limit=0)


def test_scan_reports_odd_files_and_goes_on(scratch_root: Path) -> None:
    city_dir = scratch_root / "leftImg8bit/train/zurich"
    (city_dir / "zurich_000009_000019_leftImg8bit.png").mkdir()
    (city_dir / "notes_leftImg8bit.png").write_bytes(b"not an image")
    sample = cityscapes.sample_city(scratch_root, city="zurich")
    assert len(sample.frames) == FRAMES
    reasons = dict(sample.skipped)
    assert "not a regular file" in reasons[str(city_dir / "zurich_000009_000019_leftImg8bit.png")]
    assert "name is not" in reasons[str(city_dir / "notes_leftImg8bit.png")]


def test_frame_from_image_path(demo_root: Path, tmp_path: Path) -> None:
    frame = cityscapes.sample_city(demo_root, city="zurich").frames[1]
    assert cityscapes.frame_from_image_path(frame.image_path) == frame
    stray = tmp_path / "zurich_000000_000019_leftImg8bit.png"
    write_png(stray, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="Cityscapes layout"):
        cityscapes.frame_from_image_path(stray)


# ----------------------------------------------------------------------------- label table


def test_class_names_are_case_insensitive() -> None:
    ids = cityscapes.class_ids(["Car", "PERSON", "traffic Light", "car"])
    assert ids == {name: name2label[name].id for name in ("car", "person", "traffic light")}


@pytest.mark.parametrize("names", [["cat"], [], ["license plate"]])
def test_unknown_class_lists_the_valid_names(names: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        cityscapes.class_ids(names)
    assert "car" in _one_line(error) and "person" in str(error.value)


def test_label_ids_outside_the_table_are_refused() -> None:
    label_ids = np.full((4, 5), name2label["road"].id, dtype=np.int32)
    label_ids[1, 2] = 255  # a trainIds "ignore" value
    with pytest.raises(InputError, match=r"gt\.png.*255"):
        cityscapes.gt_label_ids(label_ids, "labelIds", ["car"], "gt.png")


def test_colour_binarization_matches_label_ids_and_refuses_ambiguity() -> None:
    rng = np.random.default_rng(0)
    names = ["road", "car", "pole", "polegroup", "sky"]
    label_ids = rng.choice([name2label[n].id for n in names], size=(20, 30))
    palette = np.zeros((256, 3), np.uint8)
    for name in names:
        palette[name2label[name].id] = name2label[name].color
    colour = palette[label_ids]
    both = ["pole", "polegroup"]
    ids = [name2label[n].id for n in both]
    by_colour = cityscapes.gt_label_ids(colour, "color", both, "colour.png")
    np.testing.assert_array_equal(np.isin(by_colour, ids), np.isin(label_ids, ids))
    shared = label_ids == name2label["polegroup"].id  # same colour: the lower id, pole's
    np.testing.assert_array_equal(by_colour, np.where(shared, name2label["pole"].id, label_ids))
    with pytest.raises(ConfigError, match="polegroup"):
        cityscapes.gt_label_ids(colour, "color", ["pole"], "colour.png")


def test_resized_colour_png_is_refused(demo_root: Path) -> None:
    frame = cityscapes.sample_city(demo_root, city="zurich").frames[0]
    blurred = Image.fromarray(read_rgb(frame.color_path)).resize((64, 32), Image.BILINEAR)
    with pytest.raises(InputError, match="outside the Cityscapes table"):
        cityscapes.gt_label_ids(np.asarray(blurred), "color", ["car"], str(frame.color_path))


# ----------------------------------------------------------------------------- reading GT


def test_binary_gt_sources_and_missing_files(demo_root: Path) -> None:
    frame = cityscapes.sample_city(demo_root, city="aachen").frames[0]
    by_ids = cityscapes.load_gt(frame, ["car"], source="labelIds").mask
    expected = read_label_map(frame.label_ids_path) == name2label["car"].id
    np.testing.assert_array_equal(by_ids, expected)
    np.testing.assert_array_equal(cityscapes.load_gt(frame, ["car"]).mask, by_ids)
    colour_only = dataclasses.replace(frame, label_ids_path=None)
    image = read_rgb(frame.image_path)
    np.testing.assert_array_equal(
        cityscapes.load_gt(colour_only, ["car"], image=image).mask, by_ids
    )
    with pytest.raises(InputError) as error:
        cityscapes.load_gt(dataclasses.replace(frame, color_path=None), ["car"], "color")
    assert str(frame.image_path) in _one_line(error) and "color" in str(error.value)
    with pytest.raises(ConfigError):
        cityscapes.load_gt(frame, ["car"], source="trainIds")  # type: ignore[arg-type]


def test_corrupt_png_is_one_clear_error(scratch_root: Path) -> None:
    frames = cityscapes.sample_city(scratch_root, city="zurich").frames
    broken = frames[1].label_ids_path
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(InputError) as error:
        cityscapes.load_gt(frames[1], ["car"])
    assert str(broken) in _one_line(error)


def test_ground_truth_of_another_size_is_refused(scratch_root: Path) -> None:
    frames = cityscapes.sample_city(scratch_root, city="aachen").frames
    target = frames[2].label_ids_path
    small = Image.fromarray(read_label_map(target).astype(np.uint8)).resize((64, 32), Image.NEAREST)
    write_png(target, np.asarray(small))
    with pytest.raises(InputError) as error:
        cityscapes.load_gt(frames[2], ["person"])
    assert str(target) in _one_line(error) and "64x32" in str(error.value)


# ----------------------------------------------------------------------------- instances


def test_instances_match_their_masks_and_the_class_mask(demo_root: Path) -> None:
    total = 0
    for city in CITIES:
        for frame in cityscapes.sample_city(demo_root, city=city).frames:
            instance_ids = read_label_map(frame.instance_ids_path)
            instances = cityscapes.load_instances(frame, ["car", "person"])
            assert [i.instance_id for i in instances] == sorted({i.instance_id for i in instances})
            for inst in instances:
                np.testing.assert_array_equal(inst.mask, instance_ids == inst.instance_id)
                rows, cols = np.nonzero(inst.mask)
                assert inst.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
                assert inst.area == len(rows) > 0
                assert inst.class_name == ("car" if inst.instance_id // 1000 == 26 else "person")
            cars = [i.mask for i in instances if i.class_name == "car"]
            np.testing.assert_array_equal(
                np.logical_or.reduce(cars), cityscapes.load_gt(frame, ["car"]).mask
            )
            total += len(instances)
    assert total > 0


def test_overlapping_cars_are_distinct_instances(demo_root: Path) -> None:
    pairs = 0
    for frame in cityscapes.sample_city(demo_root, city="zurich").frames:
        cars = cityscapes.load_instances(frame, ["car"])
        for i, a in enumerate(cars):
            for b in cars[i + 1 :]:
                if (
                    a.box[0] < b.box[2]
                    and b.box[0] < a.box[2]
                    and a.box[1] < b.box[3]
                    and b.box[1] < a.box[3]
                ):
                    pairs += 1
                    assert a.instance_id != b.instance_id and not (a.mask & b.mask).any()
    assert pairs > 0


def test_instances_from_a_constructed_map() -> None:
    ids = np.full((10, 12), name2label["road"].id, dtype=np.int32)
    ids[2:4, 3:6] = 26000
    ids[5:9, 0:2] = 26001
    ids[0, 11] = 24000
    ids[9, 9] = name2label["car"].id  # a car annotated only as part of a cargroup: no instance
    cars = cityscapes.instances_from_ids(ids, ["car"])
    assert [(c.instance_id, c.box, c.area) for c in cars] == [
        (26000, (3, 2, 6, 4), 6),
        (26001, (0, 5, 2, 9), 8),
    ]
    (walker,) = cityscapes.instances_from_ids(ids, ["Person"])
    assert (walker.class_name, walker.box, walker.area) == ("person", (11, 0, 12, 1), 1)


@pytest.mark.parametrize("value", [99000, 7000, 255])
def test_instance_values_outside_the_table_are_refused(value: int) -> None:
    ids = np.full((4, 4), 26000, dtype=np.int32)
    ids[0, 0] = value
    with pytest.raises(InputError, match=rf"inst\.png.*{value}"):
        cityscapes.instances_from_ids(ids, ["car"], "inst.png")


def test_instances_of_a_class_without_instances_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="car"):
        cityscapes.instances_from_ids(np.zeros((2, 2), np.int32), ["road"])


def test_missing_instance_ids_names_the_frame(demo_root: Path) -> None:
    frame = cityscapes.sample_city(demo_root, city="zurich").frames[0]
    with pytest.raises(InputError, match="instanceIds"):
        cityscapes.load_instances(dataclasses.replace(frame, instance_ids_path=None), ["car"])
