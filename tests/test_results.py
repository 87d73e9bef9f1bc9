"""Parquet results: schema, one file per run, atomic replace on retry, pandas reads the folder."""

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from segstyle_core import results


def _row(image_id: str, iou: float | None, status: str = "ok") -> dict:
    return {
        "run_id": "brave-otter",
        "image_id": image_id,
        "classes": "car",
        "segmenter": "grabcut",
        "stylizer": "feedforward",
        "iou": iou,
        "dice": None if iou is None else 2 * iou / (1 + iou),
        "status": status,
        "error": "InputError: bad" if status == "failed" else None,
        "prompt_box": [1.0, 2.0, 3.0, 4.0],
        "started_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }


def test_runs_write_one_file_each_and_pandas_reads_all(tmp_path: Path) -> None:
    first = results.write_run(
        [_row("a", 0.5), _row("b", 0.7)], tmp_path, "segment_and_stylize", "r1"
    )
    second = results.write_run([_row("c", None, "failed")], tmp_path, "segment_and_stylize", "r2")
    assert first != second and first.exists() and second.exists()
    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["image_id"]) == ["a", "b", "c"]
    assert set(frame.columns) >= set(results.COLUMNS) | {"flow"}
    assert (frame["schema_version"] == results.SCHEMA_VERSION).all()
    assert frame.loc[frame.image_id == "a", "prompt_box"].iloc[0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_retried_run_replaces_its_own_file(tmp_path: Path) -> None:
    results.write_run([_row("a", None, "failed"), _row("b", 0.7)], tmp_path, "f", "run")
    results.write_run([_row("a", 0.6), _row("b", 0.7)], tmp_path, "f", "run")
    frame = results.read_metrics(tmp_path)
    assert len(frame) == 2 and (frame["status"] == "ok").all()
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["run.parquet"]


def test_unknown_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown result columns"):
        results.write_run([{"image_id": "a", "iuo": 0.3}], tmp_path, "f", "run")


def test_summary_counts_failures_and_means(tmp_path: Path) -> None:
    results.write_run(
        [_row("a", 0.5), _row("b", 0.7), _row("c", None, "failed")], tmp_path, "f", "r"
    )
    summary = results.summarize(results.read_metrics(tmp_path))
    assert summary.loc[0, "rows"] == 3 and summary.loc[0, "failed"] == 1
    assert summary.loc[0, "mean_iou"] == pytest.approx(0.6)


def test_missing_metrics_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(results.InputError, match="run `segstyle run` first"):
        results.read_metrics(tmp_path / "nothing")


def test_files_of_an_older_schema_read_with_empty_new_columns(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    old = results.run_file(tmp_path, "f", "old")
    old.parent.mkdir(parents=True)
    legacy = pa.table(
        {"image_id": ["a"], "iou": [0.4], "schema_version": pa.array([1], pa.int16())}
    )
    pq.write_table(legacy, old)
    results.write_run([{**_row("b", 0.8), "image_iou": 0.9}], tmp_path, "f", "new")
    frame = results.read_metrics(tmp_path).set_index("image_id")
    assert frame.loc["a", "iou"] == 0.4 and pd.isna(frame.loc["a", "image_iou"])
    assert frame.loc["b", "image_iou"] == 0.9
    assert sorted(frame["schema_version"]) == [1, results.SCHEMA_VERSION]
