"""Content-addressed stage results: hits, misses on changed content, recompute when deleted."""

from pathlib import Path
from typing import Any

from segstyle_core.stagecache import is_cached, run_stage, stage_key


def _writer(calls: list[Path]):
    def compute(out: Path) -> dict[str, Any]:
        calls.append(out)
        (out / "result.txt").write_text("done")
        return {"outputs": {"result": str(out / "result.txt")}, "value": 42}

    return compute


def test_second_call_is_a_hit_and_content_changes_miss(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"first")
    calls: list[Path] = []
    first = run_stage("segment", tmp_path / "cache", {"image": source}, {"k": 1}, _writer(calls))
    again = run_stage("segment", tmp_path / "cache", {"image": source}, {"k": 1}, _writer(calls))
    assert len(calls) == 1 and not first["cached"] and again["cached"]
    assert again["value"] == 42 and again["cache_key"] == first["cache_key"]

    run_stage("segment", tmp_path / "cache", {"image": source}, {"k": 2}, _writer(calls))
    assert len(calls) == 2  # other config
    source.write_bytes(b"second")
    run_stage("segment", tmp_path / "cache", {"image": source}, {"k": 1}, _writer(calls))
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


def test_deleted_output_is_recomputed(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    calls: list[Path] = []
    record = run_stage("stylize", tmp_path / "cache", {"image": source}, {}, _writer(calls))
    assert is_cached("stylize", tmp_path / "cache", {"image": source}, {})[1]
    Path(record["outputs"]["result"]).unlink()
    assert not is_cached("stylize", tmp_path / "cache", {"image": source}, {})[1]
    run_stage("stylize", tmp_path / "cache", {"image": source}, {}, _writer(calls))
    assert len(calls) == 2


def test_stage_killed_before_its_record_is_not_read(tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")

    def crash(out: Path) -> dict[str, Any]:
        (out / "result.txt").write_text("half")
        raise KeyboardInterrupt

    try:
        run_stage("composite", tmp_path / "cache", {"image": source}, {}, crash)
    except KeyboardInterrupt:
        pass
    assert not is_cached("composite", tmp_path / "cache", {"image": source}, {})[1]
