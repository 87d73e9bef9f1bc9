"""Prompt boxes grown and jittered on the CLI and in the flows (issue #15, item 3).

The gt stage grows and jitters every prompt box (GT or prompts file; the jitter seeded per
frame from the run's seed and the image id; all of it in the stage's cache key),
``segstyle stylize`` does so for its own boxes, and a run's Parquet records the boxes as used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from segstyle_core import cityscapes
from segstyle_core.config import PhotoPrompts, PromptConfig
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.photo import photo_prompts
from segstyle_core.prompts.from_gt import jitter_boxes
from segstyle_core.segment.base import Prompt
from segstyle_core.stages.gt import GtRecord, binarize_gt

CITY = "zurich"
MIN_AREA = 100  # PromptConfig's default
JITTER = 5
PHOTO_SIZE = (64, 48)  # width, height
Box = tuple[float, ...]


def _grown(box: tuple[int, int, int, int], px: int, width: int, height: int) -> Box:
    """``box`` grown by ``px`` on each side, clipped to a ``width``×``height`` image."""
    x0, y0, x1, y1 = box
    return (max(x0 - px, 0), max(y0 - px, 0), min(x1 + px, width), min(y1 + px, height))


def _gt_boxes(frame: cityscapes.Frame) -> dict[int, tuple[int, int, int, int]]:
    """Instance id -> GT box of the frame's cars that get a prompt, read from its GT files."""
    instances = cityscapes.load_instances(frame, ["car"])
    return {i.instance_id: i.box for i in instances if i.area >= MIN_AREA}


def _frames(root: Path) -> list[cityscapes.Frame]:
    return cityscapes.sample_city(root, city=CITY).frames


def _gt(frame: cityscapes.Frame, cache: Path, seed: int = 0, **adjust: int) -> GtRecord:
    """The gt stage of ``frame`` (a prompt per GT car) with the box settings ``adjust``."""
    prompts = PromptConfig(source="gt-instances", **adjust)
    return binarize_gt.run(cache, frame, ("car",), prompts, seed=seed)


def _boxes(record: GtRecord) -> dict[int | None, Box | None]:
    """Instance id -> prompt box of a gt record."""
    return {p.instance_id: p.box for p in record.prompt_list()}


def _offsets(jittered: GtRecord, plain: GtRecord) -> list[Box | None]:
    """Per prompt, in prompt order: the jitter's offsets of its four coordinates, or ``None``
    for a box within :data:`JITTER` pixels of the image's edge (clipping may cut them)."""
    offsets: list[Box | None] = []
    for moved, base in zip(jittered.prompt_list(), plain.prompt_list(), strict=True):
        assert moved.box is not None and base.box is not None
        x0, y0, x1, y1 = base.box
        inside = min(x0, y0) >= JITTER and x1 <= plain.width - JITTER
        inside = inside and y1 <= plain.height - JITTER
        offsets.append(tuple(np.subtract(moved.box, base.box).tolist()) if inside else None)
    return offsets


# --- the gt stage -----------------------------------------------------------------------------


def test_gt_stage_grows_every_prompt_box_by_the_expansion(demo_root: Path, tmp_path: Path) -> None:
    frame = _frames(demo_root)[0]
    truth = _gt_boxes(frame)
    assert len(truth) >= 3
    plain = _gt(frame, tmp_path / "cache")
    assert _boxes(plain) == {i: tuple(map(float, box)) for i, box in truth.items()}
    grown = _gt(frame, tmp_path / "cache", box_expand_px=6)
    expected = {i: _grown(box, 6, grown.width, grown.height) for i, box in truth.items()}
    assert _boxes(grown) == expected
    assert any(box[0] == 0 for box in expected.values())  # a car at the left edge: clipped


def test_gt_stage_jitter_is_seeded_per_run_and_frame(demo_root: Path, tmp_path: Path) -> None:
    first, second = _frames(demo_root)[:2]
    cache = tmp_path / "cache"
    plain = _gt(first, cache)
    jittered = _gt(first, cache, seed=1, box_jitter_px=JITTER)
    again = _gt(first, tmp_path / "another cache", seed=1, box_jitter_px=JITTER)
    reseeded = _gt(first, cache, seed=2, box_jitter_px=JITTER)
    assert not again.cached and _boxes(again) == _boxes(jittered)
    assert _boxes(reseeded) != _boxes(jittered) != _boxes(plain)
    for moved, base in zip(jittered.prompt_list(), plain.prompt_list(), strict=True):
        assert moved.instance_id == base.instance_id and moved.box and base.box
        assert np.abs(np.subtract(moved.box, base.box)).max() <= JITTER
    # the documented per-frame seed: the SHA-256 of "seed:image_id", first 8 bytes, big-endian
    digest = hashlib.sha256(f"1:{first.image_id}".encode()).digest()
    expected = jitter_boxes(
        plain.prompt_list(),
        plain.width,
        plain.height,
        jitter_px=JITTER,
        seed=int.from_bytes(digest[:8], "big"),
    )
    assert jittered.prompt_list() == expected
    # another frame of the same run draws other offsets (the same seed would give the same)
    pairs = [
        (a, b)
        for a, b in zip(
            _offsets(jittered, plain),
            _offsets(_gt(second, cache, seed=1, box_jitter_px=JITTER), _gt(second, cache)),
            strict=False,
        )
        if a is not None and b is not None
    ]
    assert len(pairs) >= 2 and any(a != b for a, b in pairs)


def test_gt_cache_key_follows_the_box_settings(demo_root: Path, tmp_path: Path) -> None:
    frame = _frames(demo_root)[0]

    def cached(seed: int, **adjust: int) -> bool:
        return _gt(frame, tmp_path / "cache", seed, **adjust).cached

    assert not cached(3, box_expand_px=4, box_jitter_px=2)
    assert cached(3, box_expand_px=4, box_jitter_px=2)
    assert not cached(4, box_expand_px=4, box_jitter_px=2)  # another seed
    assert not cached(3, box_expand_px=5, box_jitter_px=2)
    assert not cached(3, box_expand_px=4, box_jitter_px=3)
    assert cached(3, box_expand_px=4, box_jitter_px=2)


def test_prompts_file_boxes_grow_and_points_stay(demo_root: Path, tmp_path: Path) -> None:
    frame = _frames(demo_root)[0]
    prompts_file = tmp_path / "prompts.json"
    entry = {"box": [10, 60, 120, 120], "points": [[40, 90]], "labels": [1]}
    prompts_file.write_text(json.dumps({frame.image_id: [entry]}))
    settings = PromptConfig(source=str(prompts_file), box_expand_px=10)
    record = binarize_gt.run(tmp_path / "cache", frame, ("car",), settings)
    (prompt,) = record.prompt_list()
    assert (record.width, record.height) == (256, 128)
    assert prompt.box == (0.0, 50.0, 130.0, 128.0)
    assert prompt.points == ((40.0, 90.0),) and prompt.point_labels == (1,)


def test_negative_box_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="box_expand_px"):
        PromptConfig(box_expand_px=-1)
    with pytest.raises(ConfigError, match="box_jitter_px"):
        PhotoPrompts(box_jitter_px=-2)


# --- one photo --------------------------------------------------------------------------------


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    """A grey 64×48 PNG."""
    path = tmp_path / "photo.png"
    width, height = PHOTO_SIZE
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(path)
    return path


def test_photo_prompts_grow_and_jitter_the_boxes(photo: Path) -> None:
    one = PhotoPrompts(boxes=("10,10,30,20",), points=("15,15",))
    (plain,) = photo_prompts(str(photo), one)
    (grown,) = photo_prompts(str(photo), one.changed(box_expand_px=4))
    assert plain.box == (10.0, 10.0, 30.0, 20.0) and grown.box == (6.0, 6.0, 34.0, 24.0)
    assert grown.points == plain.points == ((15.0, 15.0),)
    (clipped,) = photo_prompts(str(photo), PhotoPrompts(boxes=("2,3,60,46",), box_expand_px=5))
    assert clipped.box == (0.0, 0.0, 64.0, 48.0)

    two = PhotoPrompts(boxes=("10,10,30,20", "35,20,55,40"), points=("5,5",), box_expand_px=2)

    def jittered(seed: int) -> list[Prompt]:
        return photo_prompts(str(photo), two.changed(box_jitter_px=3, seed=seed))

    assert jittered(0) == jittered(0) != jittered(1)
    base = photo_prompts(str(photo), two)
    assert [p.box for p in base[:2]] == [(8.0, 8.0, 32.0, 22.0), (33.0, 18.0, 57.0, 42.0)]
    for moved, grown_prompt in zip(jittered(1), base, strict=True):
        assert moved.points == grown_prompt.points
        if grown_prompt.box is None:
            assert moved.box is None  # the points' own prompt
            continue
        assert moved.box is not None
        assert np.abs(np.subtract(moved.box, grown_prompt.box)).max() <= 3


# --- the command line -------------------------------------------------------------------------


def _help(capsys: pytest.CaptureFixture[str], command: str) -> str:
    from segstyle.flows.cli import main

    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_lists_the_box_options(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "evaluate"):
        text = _help(capsys, command)
        assert "--box-expand BOX_EXPAND Grow every prompt box by this many pixels" in text
        assert "--box-jitter BOX_JITTER Move each box coordinate" in text
        assert text.count("(default: 0)") >= 2
    text = _help(capsys, "stylize")
    assert "--box-expand BOX_EXPAND Grow every box" in text
    assert "--box-jitter BOX_JITTER" in text and "--seed SEED Seed of the box jitter" in text


def test_stylize_passes_the_box_options_to_its_prompts(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import segstyle_core.photo
    from segstyle.flows.cli import EXIT_ERROR, main

    seen: list[list[Prompt]] = []

    def stop(image_path: str, prompts: list[Prompt], *rest: object) -> None:
        seen.append(prompts)
        raise InputError("stopped after the prompts")

    monkeypatch.setattr(segstyle_core.photo, "stylize_photo", stop)
    status = main(
        [
            *("stylize", str(photo), "--box", "10,10,30,20"),
            *("--box-expand", "4", "--box-jitter", "3", "--seed", "7"),
            *("--segmenter", "grabcut", "--stylizer", "feedforward"),
            *("--out", str(tmp_path / "work"), "-o", str(tmp_path / "out.png")),
        ]
    )
    assert status == EXIT_ERROR
    assert "stopped after the prompts" in capsys.readouterr().err
    width, height = PHOTO_SIZE
    expected = jitter_boxes([Prompt(box=(10, 10, 30, 20))], width, height, 4, jitter_px=3, seed=7)
    assert seen == [expected]
    assert expected[0].box != (6.0, 6.0, 34.0, 24.0)  # the jitter moved the grown box


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_run_records_the_grown_boxes(
    demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segstyle.flows.cli import main

    status = main(
        [
            *("run", "--dataset", str(demo_root), "--city", CITY, "--limit", "1"),
            *("--classes", "car", "--prompts", "gt-instances", "--box-expand", "5"),
            *("--segmenter", "grabcut", "--stylizer", "feedforward"),
            *("--out", str(tmp_path / "out")),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    rows = pd.read_parquet(captured.out.strip().splitlines()[-1])
    (frame,) = cityscapes.sample_city(demo_root, city=CITY, limit=1).frames
    assert rows["image_id"].eq(frame.image_id).all() and rows["status"].eq("ok").all()
    width, height = Image.open(frame.image_path).size
    expected = {i: _grown(box, 5, width, height) for i, box in _gt_boxes(frame).items()}
    recorded = {int(r.instance_id): tuple(r.prompt_box) for r in rows.itertuples()}
    assert recorded == expected
