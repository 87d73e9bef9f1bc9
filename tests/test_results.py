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


def test_rows_carry_their_mask_and_version_two_files_still_read(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from segstyle_core.rle import decode_mask, encode_mask

    # A file as schema version 2 wrote it: every v2 column, none that version 3 added.
    added_in_v3 = {"mask_rle"} | {c for c in results.COLUMNS if c.startswith("cached_")}
    v2_schema = pa.schema([f for f in results.SCHEMA if f.name not in added_in_v3])
    v2_row = {**results.normalise_row(_row("old", 0.3)), "schema_version": 2}
    v2_row = {k: v for k, v in v2_row.items() if k not in added_in_v3}
    old = results.run_file(tmp_path, "f", "v2")
    old.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([v2_row], schema=v2_schema), old)

    mask = np.zeros((40, 60), bool)
    mask[10:30, 5:50] = True
    results.write_run([{**_row("new", 0.8), "mask_rle": encode_mask(mask)}], tmp_path, "f", "v3")

    frame = results.read_metrics(tmp_path).set_index("image_id")
    assert results.SCHEMA_VERSION == 3
    assert frame.loc["old", "schema_version"] == 2 and pd.isna(frame.loc["old", "mask_rle"])
    assert frame.loc["old", "iou"] == 0.3
    assert frame.loc["new", "schema_version"] == 3
    assert np.array_equal(decode_mask(frame.loc["new", "mask_rle"]), mask)
