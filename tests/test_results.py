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


# --- `segstyle results` on empty, partial and all-failed runs (issue #14, item 5) ----------


def _results_cli(capsys: pytest.CaptureFixture[str], metrics: Path, *run: str) -> tuple:
    from segstyle.flows.cli import main

    status = main(["results", *run, "--metrics", str(metrics)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_results_of_an_empty_metrics_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segstyle.flows.cli import EXIT_ERROR

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    status, out, err = _results_cli(capsys, metrics)
    assert status == EXIT_ERROR and out == ""
    assert err.strip() == (
        f"segstyle: error: {metrics}: no Parquet results here yet; run `segstyle run` first"
    )
    # only what a killed writer leaves hidden, and a run folder without parts yet
    (metrics / "flow=f").mkdir()
    (metrics / "flow=f" / ".r.compacted-x.parquet").write_bytes(b"PAR1")
    results.RunRows(metrics, "f", "r").open().close()
    assert _results_cli(capsys, metrics)[:2] == (EXIT_ERROR, "")
    # a run file without rows
    results.write_run([], metrics, "f", "empty")
    status, out, err = _results_cli(capsys, metrics)
    assert status == EXIT_ERROR and err.strip().endswith(
        "the results hold no rows; run `segstyle run` first"
    )


def test_results_of_a_partial_run_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results.write_run([_row("old", 0.9)], tmp_path, "f", "older")
    live = results.RunRows(tmp_path, "f", "now").open()
    started = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    for image_id, iou in (("a", 0.5), ("b", 0.7)):
        row = {**_row(image_id, iou), "run_id": "calm-lynx", "flow_run_id": "now"}
        live.write_image(image_id, [{**row, "started_at": started}])
    status, out, err = _results_cli(capsys, tmp_path)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "run calm-lynx (now)"
    assert lines[1].startswith("partial: 2 images so far (") and lines[1].endswith("still running")
    assert "0.6" in out  # the mean IoU of the two finished images
    live.close()  # as a SIGKILL would: the lock is gone, the parts stay
    status, out, _ = _results_cli(capsys, tmp_path, "calm-lynx")
    assert status == 0 and "interrupted before it finished; rerun the same command" in out


def test_results_of_a_run_whose_every_image_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = [{**_row(image_id, None, "failed"), "flow_run_id": "bad"} for image_id in "abc"]
    results.write_run(failed, tmp_path, "f", "bad")
    status, out, err = _results_cli(capsys, tmp_path)
    assert status == 0, err
    assert out.splitlines()[0] == "run brave-otter (bad)"
    assert "failed images:" in out and "InputError: bad" in out
    assert out.rstrip().endswith("no image of this run succeeded (3 failed); fix the errors above")


def test_results_names_the_latest_runs_when_the_asked_one_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segstyle.flows.cli import EXIT_ERROR

    results.write_run([{**_row("a", 0.5), "flow_run_id": "id-1"}], tmp_path, "f", "id-1")
    results.write_run([_row("b", 0.5)], tmp_path, "f", "no-id")  # an old row without an id
    status, _, err = _results_cli(capsys, tmp_path, "nope")
    assert status == EXIT_ERROR
    assert "no run named 'nope'; latest runs:" in err and "brave-otter (id-1)" in err
