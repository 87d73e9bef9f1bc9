"""The demo dataset generator: Cityscapes layout, annotations consistent with cityscapesscripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage, json2labelImg
from PIL import Image, ImageDraw

from segstyle_core import cityscapes
from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.errors import ConfigError
from segstyle_core.images import read_label_map, read_rgb

SIZE = (256, 128)
FRAMES = 3
CITIES = ("zurich", "aachen")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    return generate_demo_dataset(out, size=SIZE, frames_per_city=FRAMES, cities=CITIES, seed=0)


@pytest.fixture(scope="module")
def frames(demo_root: Path) -> list[cityscapes.Frame]:
    return [f for city in CITIES for f in cityscapes.sample_city(demo_root, city=city).frames]


def _annotation(frame: cityscapes.Frame) -> Annotation:
    annotation = Annotation()
    annotation.fromJsonFile(str(frame.polygons_path))
    return annotation


def test_layout_has_annotated_frames_and_one_bare_image_per_city(demo_root: Path) -> None:
    for city in CITIES:
        images = sorted((demo_root / "leftImg8bit" / "train" / city).iterdir())
        gt = sorted(p.name for p in (demo_root / "gtFine" / "train" / city).iterdir())
        assert [p.name for p in images] == [
            f"{city}_{n:06d}_000019_leftImg8bit.png" for n in range(FRAMES + 1)
        ]
        assert gt == sorted(
            f"{city}_{n:06d}_000019_gtFine_{kind}"
            for n in range(FRAMES)
            for kind in ("labelIds.png", "instanceIds.png", "color.png", "polygons.json")
        )
        assert read_rgb(images[0]).shape == (SIZE[1], SIZE[0], 3)


def test_polygons_render_through_cityscapesscripts_to_the_written_pngs(
    frames: list[cityscapes.Frame], tmp_path: Path
) -> None:
    assert len(frames) == FRAMES * len(CITIES)
    for frame in frames:
        json2labelImg(str(frame.polygons_path), str(tmp_path / "ids.png"), "ids")
        np.testing.assert_array_equal(
            read_label_map(tmp_path / "ids.png"), read_label_map(frame.label_ids_path)
        )
        # json2instanceImg itself cannot save its mode-"I" image with Pillow 13 ("cannot write
        # mode I as PNG"), so its createInstanceImage result is compared in memory.
        instances = np.asarray(createInstanceImage(_annotation(frame), "ids"))
        np.testing.assert_array_equal(instances, read_label_map(frame.instance_ids_path))
        colour = np.asarray(createLabelImage(_annotation(frame), "color"))[..., :3]
        np.testing.assert_array_equal(read_rgb(frame.color_path), colour)
        assert Image.open(frame.label_ids_path).mode == "L"
        assert Image.open(frame.instance_ids_path).mode.startswith("I;16")


@pytest.mark.parametrize("classes", [["car"], ["person"], ["car", "person"]])
def test_colour_and_label_id_binarization_agree(
    frames: list[cityscapes.Frame], classes: list[str]
) -> None:
    found = 0
    for frame in frames:
        by_ids = cityscapes.load_gt(frame, classes, source="labelIds").mask
        by_colour = cityscapes.load_gt(frame, classes, source="color").mask
        np.testing.assert_array_equal(by_ids, by_colour)
        found += int(by_ids.sum())
    assert found > 0


def test_instance_ids_agree_with_label_ids(frames: list[cityscapes.Frame]) -> None:
    seen_classes = set()
    for frame in frames:
        label_ids = read_label_map(frame.label_ids_path)
        instance_ids = read_label_map(frame.instance_ids_path)
        instance = instance_ids >= 1000
        np.testing.assert_array_equal(instance_ids[instance] // 1000, label_ids[instance])
        np.testing.assert_array_equal(instance_ids[~instance], label_ids[~instance])
        seen_classes |= set(np.unique(label_ids[instance]).tolist())
    assert seen_classes == {name2label["car"].id, name2label["person"].id}


def test_every_frame_is_a_textured_street(frames: list[cityscapes.Frame]) -> None:
    everywhere = {"road", "building", "car"}
    somewhere = {"sky", "person", "vegetation", "sidewalk", "pole", "ego vehicle"}
    seen: set[str] = set()
    for frame in frames:
        image = read_rgb(frame.image_path)
        label_ids = read_label_map(frame.label_ids_path)
        names = {
            name for name in everywhere | somewhere if (label_ids == name2label[name].id).any()
        }
        assert everywhere <= names, frame.image_id
        seen |= names
        for name in everywhere:
            region = image[label_ids == name2label[name].id].astype(float)
            assert region.std(axis=0).mean() > 4.0, (frame.image_id, name)
            assert len(np.unique(region, axis=0)) > 50, (frame.image_id, name)
    assert somewhere <= seen


def _alone(polygon: list[list[int]]) -> np.ndarray:
    canvas = Image.new("L", SIZE, 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon], fill=1)
    return np.asarray(canvas, dtype=bool)


@pytest.mark.parametrize("label", ["car", "person"])
def test_objects_overlap_and_are_partly_hidden_yet_distinct(
    frames: list[cityscapes.Frame], label: str
) -> None:
    overlapping = hidden = 0
    for frame in frames:
        instance_ids = read_label_map(frame.instance_ids_path)
        polygons = [o.polygon for o in _annotation(frame).objects if o.label == label]
        drawn = [_alone(p) for p in polygons]
        # json2instanceImg numbers instances n = 0, 1, ... in file order.
        visible = [instance_ids == name2label[label].id * 1000 + n for n in range(len(drawn))]
        hidden += sum(
            bool(v.any()) and v.sum() < d.sum() for v, d in zip(visible, drawn, strict=True)
        )
        for i in range(len(drawn)):
            for j in range(i + 1, len(drawn)):
                if (drawn[i] & drawn[j]).any() and visible[i].any() and visible[j].any():
                    overlapping += 1
                    assert not (visible[i] & visible[j]).any()
    assert overlapping > 0
    assert hidden > 0


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    def files(seed: int, name: str) -> list[bytes]:
        root = generate_demo_dataset(
            tmp_path / name, size=(96, 48), frames_per_city=1, cities=("ulm",), seed=seed
        )
        return [p.read_bytes() for p in sorted(root.rglob("*.*"))]

    first, again, other = files(0, "a"), files(0, "b"), files(1, "c")
    assert len(first) == 6  # 2 images + 4 gtFine files
    assert first == again
    assert first[0] != other[0]


@pytest.mark.parametrize(
    "options",
    [
        {"size": (16, 128)},
        {"frames_per_city": 0},
        {"cities": ("bad_city",)},
        {"cities": ("Zurich",)},
        {"cities": ()},
        {"seed": -1},
    ],
)
def test_bad_options_are_config_errors(tmp_path: Path, options: dict) -> None:
    with pytest.raises(ConfigError):
        generate_demo_dataset(tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
