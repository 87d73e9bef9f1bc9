"""Issue #15.4/#15.5: whole splits and lists of cities, GT sources, stuff classes as regions.

Unit checks on the generated dataset (2 cities × 3 annotated frames, 256×128), the cache keys
of the gt and metrics stages, then offline flow runs (marked slow): ``city="all"`` over both
cities, ``--classes road`` end to end, automatic prompts scored against road components, and a
copy of the dataset that has only colour PNGs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cityscapesscripts.helpers.labels import name2label
from scipy import ndimage

from segstyle_core import cityscapes
from segstyle_core.config import DatasetSelection, PromptConfig, SegmenterConfig
from segstyle_core.errors import ConfigError, InputError
from tests.flow_params import offline_params

CITIES = ("aachen", "zurich")  # sorted
STUFF = ("road", "sky", "building", "vegetation")


@pytest.fixture()
def colour_only(demo_root: Path, tmp_path: Path) -> Path:
    """A copy of the demo dataset with only the colour PNGs as ground truth."""
    root = Path(shutil.copytree(demo_root, tmp_path / "colour-only"))
    for pattern in ("*_labelIds.png", "*_instanceIds.png", "*_polygons.json"):
        for path in (root / "gtFine").rglob(pattern):
            path.unlink()
    return root


# --- cities ---------------------------------------------------------------------------------


def test_all_covers_every_city_sorted_and_the_limit_spans_them(demo_root: Path) -> None:
    every = cityscapes.sample_city(demo_root, city="all")
    assert every.city == "all" and every.cities == CITIES
    per_city = [f for c in CITIES for f in cityscapes.sample_city(demo_root, city=c).frames]
    assert every.frames == per_city and len(per_city) == 6
    assert [f.city for f in every.frames] == ["aachen"] * 3 + ["zurich"] * 3
    listed = cityscapes.sample_city(demo_root, city=["zurich", "aachen"])
    assert listed.frames == every.frames and listed.city == "aachen,zurich"
    drawn = set()
    for seed in range(6):
        sample = cityscapes.sample_city(demo_root, city="all", seed=seed, limit=4)
        assert sample == cityscapes.sample_city(demo_root, city="all", seed=seed, limit=4)
        keys = [(f.city, f.image_id) for f in sample.frames]
        assert len(keys) == 4 and keys == sorted(keys) and set(sample.frames) <= set(per_city)
        drawn.add(frozenset(f.city for f in sample.frames))
    assert frozenset(CITIES) in drawn  # one limit over the whole run, not per city
    assert cityscapes.sample_city(demo_root, city="all", limit=99).frames == per_city
    with pytest.raises(ConfigError, match="no city 'paris'.*aachen, zurich.*'all'"):
        cityscapes.sample_city(demo_root, city=["zurich", "paris"])


def test_the_city_field_takes_a_name_a_list_all_or_random() -> None:
    from segstyle.flows.cli import parse
    from segstyle.flows.options import DATASET

    assert DatasetSelection().city == "zurich"
    assert DatasetSelection(city="random").city is None
    assert DatasetSelection(city="zurich, aachen").city == CITIES
    as_json: dict[str, Any] = {"city": ["zurich", "aachen", "zurich"]}  # a flow parameter
    assert DatasetSelection(**as_json) == DatasetSelection(city="aachen,zurich")
    assert DatasetSelection(city=("zurich",)).city == "zurich"
    assert DatasetSelection(city="all").city_label() == "all"
    assert DatasetSelection(city=None).city_label() == "a random city"
    with pytest.raises(ConfigError, match="stand alone"):
        DatasetSelection(city=("all", "zurich"))

    def selection(*flags: str) -> DatasetSelection:
        return DATASET.build(parse(["evaluate", *flags]))

    chosen = selection("--city", "all", "--gt", "color")
    assert (chosen.city, chosen.gt) == ("all", "color")
    assert selection("--city", "zurich,aachen").city == CITIES
    assert selection("--city", "none").city is None  # 'none': a random city, as 'random'
    assert selection() == DatasetSelection()


# --- GT sources and regions ------------------------------------------------------------------


def test_frames_without_the_chosen_gt_are_skipped_and_an_empty_run_is_refused(
    colour_only: Path,
) -> None:
    from segstyle_core.preflight import check_sample

    assert len(cityscapes.sample_city(colour_only, city="all").frames) == 6  # auto: colour
    assert len(cityscapes.sample_city(colour_only, city="all", source="color").frames) == 6
    none = cityscapes.sample_city(colour_only, city="zurich", source="labelIds")
    assert none.frames == [] and all("gt=labelIds" in r for _, r in none.skipped[:3])
    with pytest.raises(InputError, match="none of the .* has fine annotations.*gt=labelIds"):
        check_sample(DatasetSelection(root=str(colour_only), city="all", gt="labelIds"))


@pytest.mark.parametrize("name", STUFF)
def test_stuff_classes_become_their_connected_components(demo_root: Path, name: str) -> None:
    for frame in cityscapes.sample_city(demo_root, city="all").frames:
        mask = cityscapes.load_gt(frame, [name]).mask
        regions = cityscapes.load_gt(frame, [name], regions=True).regions
        _, count = ndimage.label(mask, structure=np.ones((3, 3)))
        assert len(regions) == count
        assert [r.instance_id for r in regions] == [
            name2label[name].id * 1000 + n for n in range(count)
        ]
        assert [r.area for r in regions] == sorted((r.area for r in regions), reverse=True)
        union = np.zeros_like(mask)
        for region in regions:
            assert region.kind == "component" and region.class_name == name
            assert not (union & region.mask).any()
            union |= region.mask
            rows, cols = np.nonzero(region.mask)
            assert region.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert region.area == len(rows)
        np.testing.assert_array_equal(union, mask)
        big = cityscapes.load_gt(frame, [name], min_area=200, regions=True).regions
        assert [r.area for r in big] == [r.area for r in regions if r.area >= 200]
        colour = dataclasses.replace(frame, label_ids_path=None, instance_ids_path=None)
        by_colour = cityscapes.load_gt(colour, [name], source="color", regions=True).regions
        assert [(r.instance_id, r.box, r.area) for r in by_colour] == [
            (r.instance_id, r.box, r.area) for r in regions
        ]


def test_instances_come_from_instance_ids_only_where_they_exist(demo_root: Path) -> None:
    frame = cityscapes.sample_city(demo_root, city="zurich").frames[0]
    instances = cityscapes.load_instances(frame, ["car"])
    regions = cityscapes.load_gt(frame, ["car", "road"], regions=True).regions
    cars = [r for r in regions if r.class_name == "car"]
    assert [(r.instance_id, r.area, r.kind) for r in cars] == [
        (i.instance_id, i.area, "instance") for i in instances
    ]
    assert {r.class_name for r in regions if r.kind == "component"} == {"road"}
    # without an instanceIds PNG, cars are the components of the car mask
    bare = dataclasses.replace(frame, instance_ids_path=None)
    components = cityscapes.load_gt(bare, ["car"], regions=True).regions
    assert components and all(r.kind == "component" for r in components)
    np.testing.assert_array_equal(
        np.logical_or.reduce([r.mask for r in components]),
        cityscapes.load_gt(frame, ["car"]).mask,
    )


# --- the gt and metrics stages ----------------------------------------------------------------


def test_gt_stage_reads_instance_ids_only_for_gt_prompts(demo_root: Path, tmp_path: Path) -> None:
    from segstyle_core.stages.gt import binarize_gt

    frames = Path(shutil.copytree(demo_root, tmp_path / "copy"))
    frame = cityscapes.sample_city(frames, city="zurich").frames[0]
    assert frame.instance_ids_path is not None
    frame.instance_ids_path.write_bytes(b"broken")  # never read for road or a prompts file
    cache = tmp_path / "cache"
    road = binarize_gt.run(cache, frame, ("road",), PromptConfig(source="largest"))
    (prompt,) = road.prompt_list()
    assert (prompt.instance_id, prompt.class_name) == (name2label["road"].id * 1000, "road")
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps({frame.image_id: [{"box": [10, 60, 120, 120]}]}))
    from_file = binarize_gt.run(cache, frame, ("car",), PromptConfig(source=str(prompts_file)))
    assert len(from_file.prompts) == 1 and "regions" not in from_file.outputs
    with pytest.raises(InputError, match="instanceIds"):
        binarize_gt.run(cache, frame, ("car",), PromptConfig(source="largest"))


def test_gt_and_metrics_cache_keys_include_the_gt_source(demo_root: Path, tmp_path: Path) -> None:
    from segstyle_core.stages.gt import binarize_gt
    from segstyle_core.stages.metrics import score_frame
    from segstyle_core.stages.segment import segment

    frame = cityscapes.sample_city(demo_root, city="zurich").frames[0]
    cache = tmp_path / "cache"
    prompts = PromptConfig(source="largest")
    records = {
        s: binarize_gt.run(cache, frame, ("road",), prompts, s)
        for s in ("labelIds", "color", "auto")
    }
    assert {s: r.gt_source for s, r in records.items()} == {
        "labelIds": "labelIds",
        "color": "color",
        "auto": "labelIds",
    }
    assert len({r.cache_key for r in records.values()}) == 3
    # the same mask either way: only the source tells the keys apart
    assert records["labelIds"].sha256["gt_mask"] == records["color"].sha256["gt_mask"]
    masks = segment.run(
        cache,
        str(frame.image_path),
        records["labelIds"].prompts,
        False,
        SegmenterConfig(backend="grabcut"),
    )
    by_ids, by_colour = (score_frame.key(records[s], masks, False) for s in ("labelIds", "color"))
    assert by_ids != by_colour  # the gt records differ only in their gt_source
    scores = score_frame.run(cache, records["color"], masks, False).scores
    assert scores[0]["iou_instance"] is not None  # scored against the road component


# --- the flows (offline backends) -------------------------------------------------------------


def _rows(state: object) -> pd.DataFrame:
    assert state.is_completed(), state.message  # type: ignore[attr-defined]
    rows = pd.read_parquet(state.result())  # type: ignore[attr-defined]
    assert set(rows["status"]) == {"ok"}, rows[["image_id", "error"]]
    return rows


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_run_over_all_cities_keeps_each_rows_city(demo_root: Path, tmp_path: Path) -> None:
    from segstyle.flows.dataset import evaluate_segmentation

    params = offline_params(demo_root, tmp_path / "out", city="all", limit=4, seed=0)
    state = evaluate_segmentation(
        dataset=params["dataset"],
        prompts=PromptConfig(source="largest"),
        segmenter=params["segmenter"],
        outputs=params["outputs"],
        return_state=True,
    )
    rows = _rows(state)
    expected = cityscapes.sample_city(demo_root, city="all", limit=4, seed=0).frames
    assert rows["image_id"].tolist() == [f.image_id for f in expected]
    assert set(rows["city"]) == set(CITIES)
    assert (rows["city"] == rows["image_id"].str.split("_").str[0]).all()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_road_end_to_end(demo_root: Path, tmp_path: Path) -> None:
    from segstyle.flows.dataset import evaluate_segmentation, segment_and_stylize

    params = offline_params(demo_root, tmp_path / "out", classes=("road",), limit=2)
    rows = _rows(
        segment_and_stylize(
            **{**params, "prompts": PromptConfig(source="largest")}, return_state=True
        )
    )
    assert rows.groupby("image_id").size().eq(1).all()
    assert set(rows["instance_class"]) == {"road"}
    assert rows["instance_id"].eq(name2label["road"].id * 1000).all()  # the largest component
    assert rows["iou_instance"].between(0, 1).all() and rows["composite_path"].notna().all()
    automatic = _rows(
        evaluate_segmentation(
            dataset=params["dataset"].changed(limit=1),
            prompts=PromptConfig(source="auto"),
            segmenter=params["segmenter"],
            outputs=params["outputs"],
            return_state=True,
        )
    )
    assert set(automatic["instance_class"]) == {"road"}
    assert automatic["iou_instance"].between(0, 1).all()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_dataset_with_only_colour_pngs_runs_end_to_end(colour_only: Path, tmp_path: Path) -> None:
    from segstyle.flows.dataset import segment_and_stylize

    params = offline_params(colour_only, tmp_path / "out", classes=("car", "road"), limit=2)
    rows = _rows(segment_and_stylize(**params, return_state=True))  # gt=auto: the colour PNGs
    assert set(rows["instance_class"]) == {"car", "road"}
    assert rows["iou_instance"].between(0, 1).all()
    colour = params["dataset"].changed(gt="color")
    again = _rows(segment_and_stylize(**{**params, "dataset": colour}, return_state=True))
    assert again["iou"].tolist() == rows["iou"].tolist()
