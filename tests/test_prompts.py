"""Prompt sources: validation, prompt files, CLI parsing, GT instances, jitter, scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segstyle_core.cityscapes import instances_from_ids
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.prompts.files import load_prompts_file
from segstyle_core.prompts.from_gt import jitter_boxes, prompts_from_instances
from segstyle_core.prompts.validation import parse_box, parse_point, validate_prompt
from segstyle_core.scoring import prompt_scores
from segstyle_core.segment.base import MaskPrediction, Prompt

CAR = 26  # Cityscapes label id of "car"


def _two_cars() -> np.ndarray:
    """64×96 instanceIds map with a large car (26000) and a small car (26001)."""
    ids = np.zeros((64, 96), dtype=np.int32)
    ids[10:40, 5:55] = CAR * 1000
    ids[30:50, 70:90] = CAR * 1000 + 1
    return ids


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        (Prompt(box=(200, 10, 300, 40)), "outside"),
        (Prompt(box=(-50, -50, -1, -1)), "outside"),
        (Prompt(box=(40, 10, 20, 30)), "inverted"),
        (Prompt(box=(10, 30, 20, 30)), "inverted"),
        (Prompt(points=((100.0, 5.0),), point_labels=(1,)), "outside"),
        (Prompt(points=((5.0, 5.0),), point_labels=(2,)), "labels"),
        (Prompt(points=((5.0, 5.0),), point_labels=()), "labels"),
        (Prompt(), "neither"),
    ],
)
def test_validate_prompt_rejects_bad_prompts(prompt: Prompt, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment) as info:
        validate_prompt(prompt, 96, 64, "frames.json: 'a'[0]")
    message = str(info.value)
    assert message.startswith("frames.json: 'a'[0]: ")
    assert "\n" not in message


def test_validate_prompt_clips_a_box_that_sticks_out() -> None:
    prompt = Prompt(box=(-5, 10, 120, 70), points=((3.5, 4.0),), point_labels=(1,))
    checked = validate_prompt(prompt, 96, 64, "cli")
    assert checked.box == (0.0, 10.0, 96.0, 64.0)
    assert checked.points == prompt.points


# --- CLI values -------------------------------------------------------------------------------


def test_parse_box_and_point() -> None:
    assert parse_box("10,20.5,200,120") == (10.0, 20.5, 200.0, 120.0)
    assert parse_point("3,4") == (3.0, 4.0, 1)
    assert parse_point(" 3, 4, 0") == (3.0, 4.0, 0)
    for bad in ("10,20,30", "a,b,c,d", "1,2,3,nan", ""):
        with pytest.raises(InputError, match="box"):
            parse_box(bad)
    for bad in ("3", "3,4,2", "3,4,1,1", "x,4"):
        with pytest.raises(InputError, match="point"):
            parse_point(bad)


# --- prompt files -----------------------------------------------------------------------------


def test_load_json_prompts(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(
        '{"a": [{"box": [1, 2, 30, 40]}, {"points": [[5, 6], [7, 8]], "labels": [1, 0]}],'
        ' "b": [{"box": [0, 0, 9, 9], "points": [[4, 4]]}]}'
    )
    prompts = load_prompts_file(path)
    assert prompts["a"] == [
        Prompt(box=(1.0, 2.0, 30.0, 40.0)),
        Prompt(points=((5.0, 6.0), (7.0, 8.0)), point_labels=(1, 0)),
    ]
    assert prompts["b"][0].kind() == "box+points"
    assert prompts["b"][0].point_labels == (1,)


def test_load_csv_prompts_groups_rows(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text(
        "image_id,prompt,x0,y0,x1,y1,px,py,label\n"
        "a,car,10,20,50,60,,,\n"
        "a,car,,,,,30,40,1\n"
        "a,car,,,,,12,22,0\n"
        "a,,1,1,5,5,,,\n"
        "b,,,,,,7,8,\n"
    )
    prompts = load_prompts_file(path)
    assert prompts["a"] == [
        Prompt(
            box=(10.0, 20.0, 50.0, 60.0), points=((30.0, 40.0), (12.0, 22.0)), point_labels=(1, 0)
        ),
        Prompt(box=(1.0, 1.0, 5.0, 5.0)),
    ]
    assert prompts["b"] == [Prompt(points=((7.0, 8.0),), point_labels=(1,))]


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("p.json", "", "empty"),
        ("p.json", "  \n", "empty"),
        ("p.json", "{}", "no prompts"),
        ("p.json", "{not json", "invalid JSON"),
        ("p.json", "[1, 2]", "object keyed by image id"),
        ("p.json", '{"a": []}', "non-empty list"),
        ("p.json", '{"a": {"box": [1, 2, 3, 4]}}', "non-empty list"),
        ("p.json", '{"a": [[1, 2, 3, 4]]}', "must be an object"),
        ("p.json", '{"a": [{}]}', "neither a box nor points"),
        ("p.json", '{"a": [{"box": "1,2,3,4"}]}', "box must be a list of 4 numbers"),
        ("p.json", '{"a": [{"box": [1, 2, 3]}]}', "box must be a list of 4 numbers"),
        ("p.json", '{"a": [{"box": [1, 2, true, 4]}]}', "box must be a list of 4 numbers"),
        ("p.json", '{"a": [{"bbox": [1, 2, 3, 4]}]}', "unknown key"),
        ("p.json", '{"a": [{"points": [[1, 2, 3]]}]}', "each point"),
        ("p.json", '{"a": [{"points": [[1, 2]], "labels": [1, 1]}]}', "1 points but 2 labels"),
        ("p.json", '{"a": [{"points": [[1, 2]], "labels": ["fg"]}]}', "labels must be"),
        ("p.csv", "", "empty"),
        ("p.csv", "image_id,x0,y0,x1,y1\n", "no prompts"),
        ("p.csv", "image,x0,y0,x1,y1\na,1,2,3,4\n", "header"),
        ("p.csv", "image_id,x0,y0\na,1,2\n", "header"),
        ("p.csv", "image_id,x0,y0,x1,y1\na,1,2,three,4\n", "line 2: .*not all numbers"),
        ("p.csv", "image_id,x0,y0,x1,y1\na,1,2,,4\n", "line 2: fill all of x0,y0,x1,y1"),
        ("p.csv", "image_id,x0,y0,x1,y1\n,1,2,3,4\n", "image_id is empty"),
        ("p.csv", "image_id,x0,y0,x1,y1\na,1,2,3,4,5\n", "more values"),
        ("p.csv", "image_id,x0,y0,x1,y1,px,py\na,,,,,,\n", "neither a box"),
        ("p.csv", "image_id,px,py,label\na,1,2,5\n", "label '5'"),
        ("p.csv", "image_id,prompt,x0,y0,x1,y1\na,p,1,2,3,4\na,p,1,2,3,4\n", "second box"),
        ("p.txt", "a 1 2 3 4", "use a .json or .csv"),
        # hostile JSON: a repeated key would silently drop prompts; huge numbers and deep
        # nesting used to escape as OverflowError, ValueError and RecursionError
        ("p.json", '{"a": [{"box": [1, 2, 3, 4]}], "a": [{"box": [5, 6, 7, 8]}]}', "'a' appears"),
        ("p.json", '{"a": [{"box": [1, 2, 3, 4], "box": [1, 2, 3, 4]}]}', "'box' appears twice"),
        ("p.json", '{"a": [{"box": [1, 2, 3, ' + "9" * 400 + "]}]}", "400 digits"),
        ("p.json", '{"a": [{"box": [1, 2, 3, ' + "9" * 5000 + "]}]}", "5000 digits"),
        ("p.json", "[" * 100_000, "nested too deeply"),
        ("p.json", '{"a": [{"box": [1, 2, 3, 1e999]}]}', r"box \(1.0, 2.0, 3.0, inf\) is not"),
        ("p.json", '{"a": [{"points": [[1, NaN]]}]}', r"point \(1.0, nan\) is not two finite"),
        ("p.json", '{"a": [{"box": [1, 2, 3, 4], "labels": [NaN]}]}', "labels must be"),
        ("p.csv", "image_id,x0,y0,x1,y1\na,1,2,3,1e999\n", "finite"),
    ],
)
def test_bad_prompt_files_name_the_file(
    tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=fragment) as info:
        load_prompts_file(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_a_csv_saved_by_a_spreadsheet_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with U+FEFF; its header was refused as lacking image_id."""
    path = tmp_path / "excel.csv"
    path.write_bytes("image_id,x0,y0,x1,y1\nzurich_1,1,1,50,50\n".encode("utf-8-sig"))
    assert load_prompts_file(path) == {"zurich_1": [Prompt(box=(1.0, 1.0, 50.0, 50.0))]}


def test_missing_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such prompts file"):
        load_prompts_file(tmp_path / "nope.json")


# --- prompts from ground truth ----------------------------------------------------------------


def test_prompts_from_instances_all_and_largest() -> None:
    instances = instances_from_ids(_two_cars(), ["car"])
    every = prompts_from_instances(instances, mode="all", min_area=1)
    assert [p.instance_id for p in every] == [26000, 26001]
    assert {p.class_name for p in every} == {"car"}
    assert {p.box for p in every} == {(5.0, 10.0, 55.0, 40.0), (70.0, 30.0, 90.0, 50.0)}
    largest = prompts_from_instances(instances, mode="largest", min_area=1)
    assert [(p.instance_id, p.box) for p in largest] == [(26000, (5.0, 10.0, 55.0, 40.0))]
    assert [p.instance_id for p in prompts_from_instances(instances, min_area=401)] == [26000]
    assert prompts_from_instances(instances, mode="largest", min_area=10_000) == []
    with pytest.raises(ConfigError, match="mode"):
        prompts_from_instances(instances, mode="biggest")  # type: ignore[arg-type]


def test_jitter_is_seeded_and_stays_in_the_image() -> None:
    prompts = [
        Prompt(box=(0, 0, 10, 8)),
        Prompt(box=(40, 20, 90, 60)),
        Prompt(points=((3, 3),), point_labels=(1,)),
    ]
    first = jitter_boxes(prompts, 96, 64, expand_pct=10, jitter_px=6, seed=3)
    assert first == jitter_boxes(prompts, 96, 64, expand_pct=10, jitter_px=6, seed=3)
    assert first != jitter_boxes(prompts, 96, 64, expand_pct=10, jitter_px=6, seed=4)
    assert first[2] == prompts[2]
    for seed in range(20):
        for prompt in jitter_boxes(prompts, 96, 64, expand_px=3, jitter_px=20, seed=seed)[:2]:
            assert prompt.box is not None
            x0, y0, x1, y1 = prompt.box
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 64


def test_expansion_without_jitter() -> None:
    (grown,) = jitter_boxes(
        [Prompt(box=(40, 20, 80, 40), instance_id=7)], 96, 64, expand_px=2, expand_pct=10
    )
    assert grown.box == (34.0, 16.0, 86.0, 44.0)
    assert grown.instance_id == 7
    with pytest.raises(ConfigError, match="jitter_px"):
        jitter_boxes([], 96, 64, jitter_px=-1)


# --- instance-aware scores --------------------------------------------------------------------


def test_instance_aware_scores_separate_one_car_from_the_class() -> None:
    ids = _two_cars()
    big, small = sorted(instances_from_ids(ids, ["car"]), key=lambda i: -i.area)
    class_mask = ids >= CAR * 1000
    own = Prompt(box=(0, 0, 1, 1), instance_id=small.instance_id)
    predictions = [MaskPrediction(small.mask.copy(), 0.9, ("a", "b"))] * 2
    scores, without = prompt_scores(
        predictions, [own, Prompt(box=(0, 0, 1, 1))], class_mask, [big, small]
    )
    assert scores["iou_instance"] == 1.0 and scores["dice_instance"] == 1.0
    assert scores["iou"] == pytest.approx(small.area / (small.area + big.area))
    assert scores["precision"] == 1.0
    assert scores["recall"] == pytest.approx(small.area / (small.area + big.area))
    assert scores["pred_area"] == scores["instance_area"] == small.area
    assert scores["gt_area"] == small.area + big.area
    assert scores["mask_score"] == 0.9 and scores["segment_notes"] == "a;b"
    assert without["iou_instance"] is None and without["instance_area"] is None
    assert without["iou"] == scores["iou"]
    with pytest.raises(InputError, match="shapes differ"):
        prompt_scores([MaskPrediction(small.mask[:10], 0.9)], [own], class_mask, [small])
