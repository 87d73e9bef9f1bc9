"""Content-addressed stage results: hits, misses on changed content, recompute when deleted,
truncated or replaced, JSON records with relative paths, code identity in the key."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from segstyle_core import stagecache
from segstyle_core.stagecache import (
    RECORD,
    Stage,
    StageKey,
    StageRecord,
    code_sha256,
    stage,
    stage_dir,
    stage_key,
)


@dataclass(frozen=True, kw_only=True)
class CountRecord(StageRecord):
    value: int


def _stage(name: str, calls: list[Path]) -> Stage:
    def key(source: str, setting: int, cache_dir: str) -> StageKey:
        return StageKey({"image": source}, {"k": setting})

    @stage(name, key=key)
    def compute(out: Path, source: str, setting: int, cache_dir: str) -> CountRecord:
        calls.append(out)
        (out / "result.txt").write_text(f"done {setting}")
        return CountRecord(outputs={"result": str(out / "result.txt")}, value=42)

    return compute


def test_second_call_is_a_hit_and_content_changes_miss(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"first")
    calls: list[Path] = []
    segment = _stage("segment", calls)
    cache = str(tmp_path / "cache")
    first = segment.run(str(source), 1, cache)
    again = segment.run(str(source), 1, cache)
    assert len(calls) == 1 and not first.cached and again.cached
    assert again.value == 42 and again.cache_key == first.cache_key

    segment.run(str(source), 2, cache)
    assert len(calls) == 2  # other config
    source.write_bytes(b"second")
    segment.run(str(source), 1, cache)
    assert len(calls) == 3  # same path, other bytes


def test_same_bytes_elsewhere_share_the_key(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"pixels")
    (tmp_path / "b.png").write_bytes(b"pixels")
    assert stage_key("gt", {"x": tmp_path / "a.png"}, {}) == stage_key(
        "gt", {"x": tmp_path / "b.png"}, {}
    )
    assert stage_key("gt", {"x": tmp_path / "a.png"}, {}) != stage_key(
        "segment", {"x": tmp_path / "a.png"}, {}
    )


def test_the_code_of_the_stage_is_part_of_the_key(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"pixels")
    files = {"x": tmp_path / "a.png"}
    assert stage_key("gt", files, {}, ("segstyle_core.metrics",)) != stage_key(
        "gt", files, {}, ("segstyle_core.masks",)
    )
    # a package counts with every module in it
    assert code_sha256(("segstyle_core.stages",)) != code_sha256(("segstyle_core.stages.gt",))


@pytest.mark.parametrize("damage", ["delete", "truncate", "replace"])
def test_a_damaged_output_is_recomputed_and_logged(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    calls: list[Path] = []
    stylize = _stage("stylize", calls)
    cache = str(tmp_path / "cache")
    record = stylize.run(str(source), 1, cache)
    assert stylize.cached(str(source), 1, cache) is not None
    output = Path(record.path("result"))
    if damage == "delete":
        output.unlink()
    elif damage == "truncate":
        output.write_bytes(output.read_bytes()[:3])
    else:
        output.write_text("done 9")  # valid, same size, other content
    with caplog.at_level(logging.WARNING, logger="segstyle.cache"):
        assert stylize.cached(str(source), 1, cache) is None
        again = stylize.run(str(source), 1, cache)
    assert len(calls) == 2 and not again.cached
    assert output.read_text() == "done 1"
    assert any(str(output) in message for message in caplog.messages)


def test_records_are_json_with_paths_relative_to_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    record = _stage("gt", []).run(str(source), 1, str(tmp_path / "cache"))
    stored = json.loads(
        (stage_dir(tmp_path / "cache", "gt", record.cache_key) / RECORD).read_text()
    )
    assert not Path(stored["outputs"]["result"]).is_absolute()
    assert stored["sha256"]["result"] == stagecache.file_sha256(record.path("result"))
    assert "seconds" not in stored and "cached" not in stored  # facts of one run, not stored


def test_a_moved_cache_folder_still_serves_its_results(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    calls: list[Path] = []
    figures = _stage("figures", calls)
    figures.run(str(source), 1, str(tmp_path / "one"))
    (tmp_path / "one").rename(tmp_path / "two")
    moved = figures.run(str(source), 1, str(tmp_path / "two"))
    assert moved.cached and len(calls) == 1
    assert moved.path("result").startswith(str(tmp_path / "two"))


def test_a_cache_hit_reports_the_time_of_this_call(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    slow_calls: list[Path] = []

    def key(source: str, cache_dir: str) -> StageKey:
        return StageKey({"image": source}, {})

    @stage("composite", key=key)
    def slow(out: Path, source: str, cache_dir: str) -> CountRecord:
        import time

        slow_calls.append(out)
        time.sleep(0.5)
        (out / "r.txt").write_text("r")
        return CountRecord(outputs={"r": str(out / "r.txt")}, value=1)

    first = slow.run(str(source), str(tmp_path / "cache"))
    hit = slow.run(str(source), str(tmp_path / "cache"))
    assert first.seconds >= 0.5 and hit.cached and hit.seconds < first.seconds / 5


def test_stage_killed_before_its_record_is_not_read(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")

    def key(source: str, cache_dir: str) -> StageKey:
        return StageKey({"image": source}, {})

    @stage("composite", key=key)
    def crash(out: Path, source: str, cache_dir: str) -> CountRecord:
        (out / "result.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        crash.run(str(source), str(tmp_path / "cache"))
    assert crash.cached(str(source), str(tmp_path / "cache")) is None
