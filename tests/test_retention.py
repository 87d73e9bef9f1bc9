"""``segstyle prune --keep N``: the latest runs of each flow stay, older runs lose their Parquet
file and run folder; the cache, runs still going, and anything outside ``<out>`` are never
touched."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from segstyle_core import results
from segstyle_core.errors import ConfigError
from segstyle_core.retention import prune
from tests.helpers_core import write_run

FLOW = "segment_and_stylize"


def _run(out: Path, day: int, flow: str = FLOW) -> str:
    """A finished run started on ``day`` with two images, its pictures in its run folder."""
    name, run_id = f"night-{day}", f"id-{flow[:4]}-{day}"
    rows = []
    for image in ("a", "b"):
        picture = out / "runs" / name / image / "panel.png"
        picture.parent.mkdir(parents=True)
        picture.write_bytes(b"png")
        rows.append(
            {
                "run_id": name,
                "flow_run_id": run_id,
                "image_id": image,
                "status": "ok",
                "iou": 0.5,
                "panel_path": str(picture),
                "started_at": dt.datetime(2026, 12, day, tzinfo=dt.UTC),
            }
        )
    write_run(rows, out / "metrics", flow, run_id)
    return name


def test_prune_keeps_the_latest_runs_per_flow_and_the_cache(tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = [_run(out, day) for day in (3, 1, 4, 2)]  # written out of order
    evaluated = _run(out, 5, flow="evaluate_segmentation")
    cache_entry = out / "cache" / "stylize" / "ab" / "key" / "stylized.png"
    cache_entry.parent.mkdir(parents=True)
    cache_entry.write_bytes(b"kept")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    (out / "runs" / "link").symlink_to(outside)

    preview = prune(out, keep=2, dry_run=True)
    assert [r.split(" ")[0] for r in preview.runs] == ["night-1", "night-2"]
    assert len(pd.read_parquet(out / "metrics")) == 10  # nothing removed yet

    pruned = prune(out, keep=2)
    assert pruned.runs == preview.runs
    left = pd.read_parquet(out / "metrics")
    assert sorted(left["run_id"].unique()) == sorted(["night-3", "night-4", evaluated])
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        ["night-3", "night-4", evaluated, "link"]
    )
    assert set(names) - {p.name for p in (out / "runs").iterdir()} == {"night-1", "night-2"}
    assert cache_entry.read_bytes() == b"kept"
    assert (outside / "keep.txt").read_text() == "not ours"
    assert prune(out, keep=2).runs == []  # nothing more to do


def test_prune_never_touches_a_run_still_going(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(out, 1)
    _run(out, 2)
    with results.RunRows(out / "metrics", FLOW, "running") as durable:
        durable.write_image("c", [{"run_id": "now", "image_id": "c", "status": "ok"}])
        assert prune(out, keep=1).runs[0].startswith("night-1")
        assert (out / "metrics" / f"flow={FLOW}" / "running.parquet").exists()
        durable.compact()
    assert "now" in set(pd.read_parquet(out / "metrics")["run_id"])


def test_prune_keeps_at_least_one_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep=0: keep at least the latest run"):
        prune(tmp_path, keep=0)


@pytest.mark.usefixtures("prefect_api")
def test_the_prune_flow_removes_old_runs(tmp_path: Path) -> None:
    from segstyle.flows.prune import prune_outputs

    out = tmp_path / "out"
    for day in (1, 2, 3):
        _run(out, day)
    assert prune_outputs(str(out), keep=1) == 2
    assert set(pd.read_parquet(out / "metrics")["run_id"]) == {"night-3"}
