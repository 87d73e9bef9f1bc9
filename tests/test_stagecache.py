"""Content-addressed stage results: hits, misses on changed content, recompute when deleted,
truncated or replaced, JSON records with relative paths, code identity and every declared input
in the key."""

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from segstyle_core import stagecache
from segstyle_core.stagecache import (
    RECORD,
    Stage,
    StageRecord,
    code_sha256,
    load_record,
    stage,
    stage_dir,
)


@dataclass(frozen=True, kw_only=True)
class CountRecord(StageRecord):
    value: int


def _stage(name: str, calls: list[Path]) -> Stage:
    @stage(name, files=("source",))
    def compute(out: Path, source: str, setting: int) -> CountRecord:
        calls.append(out)
        (out / "result.txt").write_text(f"done {setting}")
        return CountRecord(outputs={"result": str(out / "result.txt")}, value=42)

    return compute


def _cached(stage: Stage, cache: Path, *args: object) -> StageRecord | None:
    """The verified stored record of ``stage`` for ``args``, or ``None``; computes nothing."""
    return load_record(cache, stage_dir(cache, stage.name, stage.key(*args)), stage.record_type)


def test_second_call_is_a_hit_and_content_changes_miss(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"first")
    calls: list[Path] = []
    segment = _stage("segment", calls)
    cache = tmp_path / "cache"
    first = segment.run(cache, str(source), 1)
    again = segment.run(cache, str(source), 1)
    assert len(calls) == 1 and not first.cached and again.cached
    assert again.value == 42 and again.cache_key == first.cache_key

    segment.run(cache, str(source), 2)
    assert len(calls) == 2  # other config
    source.write_bytes(b"second")
    segment.run(cache, str(source), 1)
    assert len(calls) == 3  # same path, other bytes


def test_same_bytes_elsewhere_share_the_key(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"pixels")
    (tmp_path / "b.png").write_bytes(b"pixels")
    gt, segment = _stage("gt", []), _stage("segment", [])
    assert gt.key(str(tmp_path / "a.png"), 1) == gt.key(str(tmp_path / "b.png"), 1)
    assert gt.key(str(tmp_path / "a.png"), 1) != segment.key(str(tmp_path / "a.png"), 1)


def test_the_code_of_the_stage_is_part_of_the_key(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"pixels")

    def compute(out: Path, source: str) -> CountRecord:
        raise AssertionError("never computed")

    metrics = stage("gt", files=("source",), code=("segstyle_core.metrics",))(compute)
    masks = stage("gt", files=("source",), code=("segstyle_core.masks",))(compute)
    assert metrics.key(str(tmp_path / "a.png")) != masks.key(str(tmp_path / "a.png"))
    # a package counts with every module in it
    assert code_sha256(("segstyle_core.stages",)) != code_sha256(("segstyle_core.stages.gt",))


def test_an_earlier_records_content_keys_a_later_stage_not_its_place(tmp_path: Path) -> None:
    made: list[Path] = []
    first = _stage("gt", made)
    (tmp_path / "input.bin").write_bytes(b"x")

    @stage("segment", keys={"label": str.lower})
    def later(out: Path, earlier: CountRecord, label: str) -> CountRecord:
        (out / "r.txt").write_text(Path(earlier.path("result")).read_text())
        return CountRecord(outputs={"r": str(out / "r.txt")}, value=earlier.value)

    one = first.run(tmp_path / "one", str(tmp_path / "input.bin"), 1)
    two = first.run(tmp_path / "two", str(tmp_path / "input.bin"), 1)
    other = first.run(tmp_path / "one", str(tmp_path / "input.bin"), 2)
    assert later.key(one, "A") == later.key(two, "a")  # same bytes elsewhere; keys= applied
    assert later.key(one, "a") != later.key(other, "a")  # other bytes
    assert later.key(one, "a") != later.key(dataclasses.replace(one, value=7), "a")  # a fact
    with pytest.raises(TypeError, match="no parameter missing"):
        stage("segment", files=("missing",))(later.compute)


@pytest.mark.parametrize("damage", ["delete", "truncate", "replace"])
def test_a_damaged_output_is_recomputed_and_logged(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    calls: list[Path] = []
    stylize = _stage("stylize", calls)
    cache = tmp_path / "cache"
    record = stylize.run(cache, str(source), 1)
    assert _cached(stylize, cache, str(source), 1) is not None
    output = Path(record.path("result"))
    if damage == "delete":
        output.unlink()
    elif damage == "truncate":
        output.write_bytes(output.read_bytes()[:3])
    else:
        output.write_text("done 9")  # valid, same size, other content
    with caplog.at_level(logging.WARNING, logger="segstyle_core.stagecache"):
        assert _cached(stylize, cache, str(source), 1) is None
        again = stylize.run(cache, str(source), 1)
    assert len(calls) == 2 and not again.cached
    assert output.read_text() == "done 1"
    assert any(str(output) in message for message in caplog.messages)


def test_records_are_json_with_paths_relative_to_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    record = _stage("gt", []).run(tmp_path / "cache", str(source), 1)
    stored = json.loads(
        (stage_dir(tmp_path / "cache", "gt", record.cache_key) / RECORD).read_text()
    )
    assert not Path(stored["outputs"]["result"]).is_absolute()
    assert stored["sha256"]["result"] == stagecache.file_sha256(record.path("result"))
    assert stored["sizes"]["result"] == len("done 1") == Path(record.path("result")).stat().st_size
    assert "seconds" not in stored and "cached" not in stored  # facts of one run, not stored


def test_a_moved_cache_folder_still_serves_its_results(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    calls: list[Path] = []
    figures = _stage("figures", calls)
    figures.run(tmp_path / "one", str(source), 1)
    (tmp_path / "one").rename(tmp_path / "two")
    moved = figures.run(tmp_path / "two", str(source), 1)
    assert moved.cached and len(calls) == 1
    assert moved.path("result").startswith(str(tmp_path / "two"))


def test_a_cache_hit_reports_the_time_of_this_call(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    slow_calls: list[Path] = []

    @stage("composite", files=("source",))
    def slow(out: Path, source: str) -> CountRecord:
        import time

        slow_calls.append(out)
        time.sleep(0.5)
        (out / "r.txt").write_text("r")
        return CountRecord(outputs={"r": str(out / "r.txt")}, value=1)

    first = slow.run(tmp_path / "cache", str(source))
    hit = slow.run(tmp_path / "cache", str(source))
    assert first.seconds >= 0.5 and hit.cached and hit.seconds < first.seconds / 5


def test_stage_killed_before_its_record_is_not_read(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")

    @stage("composite", files=("source",))
    def crash(out: Path, source: str) -> CountRecord:
        (out / "result.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        crash.run(tmp_path / "cache", str(source))
    assert _cached(crash, tmp_path / "cache", str(source)) is None


def test_two_writers_of_one_result_compute_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two runs sharing a cache reach the same missing result at once: one computes it (its
    half-written hidden file survives the other's arrival), the other says it waits, waits
    and finds it."""
    import threading
    import time

    (tmp_path / "a.png").write_bytes(b"pixels")
    calls: list[Path] = []
    started = threading.Event()

    @stage("figures", files=("source",))
    def compute(out: Path, source: str) -> CountRecord:
        calls.append(out)
        temporary = out / ".panel.png.tmp"
        temporary.write_text("half")
        started.set()
        time.sleep(0.5)  # the other writer arrives meanwhile
        temporary.replace(out / "panel.png")
        return CountRecord(outputs={"panel": str(out / "panel.png")}, value=len(calls))

    cache, records = tmp_path / "cache", []

    def run() -> None:
        records.append(compute.run(cache, str(tmp_path / "a.png")))

    first = threading.Thread(target=run)
    first.start()
    assert started.wait(10)
    with caplog.at_level(logging.INFO, logger="segstyle_core.stagecache"):
        run()
    first.join()
    assert len(calls) == 1 and sorted(r.cached for r in records) == [False, True]
    assert {r.value for r in records} == {1} and len({r.cache_key for r in records}) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"{calls[0]}: another run is computing it; waiting for it"
    ]


def test_a_planted_lock_link_is_replaced_and_its_target_left_alone(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"pixels")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    segment, cache = _stage("segment", []), tmp_path / "cache"
    directory = stage_dir(cache, "segment", segment.key(str(tmp_path / "a.png"), 1))
    directory.parent.mkdir(parents=True)
    lock = directory.with_name(f"{directory.name}.lock")
    lock.symlink_to(outside)
    assert segment.run(cache, str(tmp_path / "a.png"), 1).value == 42
    assert outside.read_text() == "keep me" and lock.is_file() and not lock.is_symlink()


def test_only_a_dead_writers_hidden_files_are_cleared(tmp_path: Path) -> None:
    """A recompute removes a hidden file whose writer was a process of this host that is gone,
    or one older than LEFTOVER_AGE_S; it keeps a young one of a live or unknown writer (another
    machine's, whose lock this one may not see)."""
    import os
    import subprocess
    import sys
    import time

    from segstyle_core.fileio import HOST_TAG

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / "a.png").write_bytes(b"pixels")
    segment, cache = _stage("segment", []), tmp_path / "cache"
    directory = stage_dir(cache, "segment", segment.key(str(tmp_path / "a.png"), 1))
    directory.mkdir(parents=True)
    (directory / ".live.png.tmp").write_bytes(b"being written elsewhere")
    (directory / f".panel.{HOST_TAG}-{os.getpid()}.x1.png").write_bytes(
        b"this process is writing it"
    )
    killed = directory / f".panel.{HOST_TAG}-{gone}.x2.png"
    killed.write_bytes(b"half")
    old = directory / ".dead.png.tmp"
    old.write_bytes(b"half")
    an_hour_ago = time.time() - stagecache.LEFTOVER_AGE_S - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    old_folder = directory / ".frames.tmp"  # a folder with content: removed, not walked into
    (old_folder / "inner").mkdir(parents=True)
    os.utime(old_folder, (an_hour_ago, an_hour_ago))
    assert segment.run(cache, str(tmp_path / "a.png"), 1).value == 42
    assert (directory / ".live.png.tmp").exists() and not old.exists() and not killed.exists()
    assert not old_folder.exists()
    assert (directory / f".panel.{HOST_TAG}-{os.getpid()}.x1.png").exists()
