"""Parquet results: schema, one file per run, atomic replace on retry, pandas reads the folder."""

import datetime as dt
import os
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from segstyle_core import results
from tests.helpers_core import write_run


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
    first = write_run([_row("a", 0.5), _row("b", 0.7)], tmp_path, "segment_and_stylize", "r1")
    second = write_run([_row("c", None, "failed")], tmp_path, "segment_and_stylize", "r2")
    assert first != second and first.exists() and second.exists()
    frame = pd.read_parquet(tmp_path)
    assert sorted(frame["image_id"]) == ["a", "b", "c"]
    assert set(frame.columns) >= set(results.COLUMNS) | {"flow"}
    assert (frame["schema_version"] == results.SCHEMA_VERSION).all()
    assert frame.loc[frame.image_id == "a", "prompt_box"].iloc[0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_retried_run_replaces_its_own_file(tmp_path: Path) -> None:
    write_run([_row("a", None, "failed"), _row("b", 0.7)], tmp_path, "f", "run")
    write_run([_row("a", 0.6), _row("b", 0.7)], tmp_path, "f", "run")
    frame = results.read_metrics(tmp_path)
    assert len(frame) == 2 and (frame["status"] == "ok").all()
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["run.parquet"]


def test_unknown_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown result columns"):
        write_run([{"image_id": "a", "iuo": 0.3}], tmp_path, "f", "run")


def test_summary_counts_failures_and_means(tmp_path: Path) -> None:
    write_run([_row("a", 0.5), _row("b", 0.7), _row("c", None, "failed")], tmp_path, "f", "r")
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
    write_run([{**_row("b", 0.8), "image_iou": 0.9}], tmp_path, "f", "new")
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
    write_run([{**_row("new", 0.8), "mask_rle": encode_mask(mask)}], tmp_path, "f", "v3")

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
    write_run([], metrics, "f", "empty")
    status, out, err = _results_cli(capsys, metrics)
    assert status == EXIT_ERROR and err.strip().endswith(
        "the results hold no rows; run `segstyle run` first"
    )


def test_results_of_a_wrong_path_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A folder of other files (a user's typo, /etc) or one such file: one line with the fix,
    not a warning per file telling the user to delete them."""
    from segstyle.flows.cli import EXIT_ERROR

    config = tmp_path / "config"
    (config / "sub").mkdir(parents=True)
    for name in ("a.conf", "sub/b.xml"):
        (config / name).write_text("key = value\n")
    status, out, err = _results_cli(capsys, config)
    assert (status, out) == (EXIT_ERROR, "")
    assert err.splitlines() == [
        f"segstyle: error: {config}: no segstyle results here (2 other files, the first "
        f"{config / 'a.conf'}); give the metrics folder that `segstyle run` writes "
        "(<out>/metrics), or run it first"
    ]
    status, out, err = _results_cli(capsys, config / "a.conf")
    assert (status, out) == (EXIT_ERROR, "")
    (line,) = err.splitlines()
    assert line.startswith(f"segstyle: error: {config / 'a.conf'}: not a readable Parquet file (")
    assert line.endswith(
        "; give a run file (<out>/metrics/flow=<flow>/<run>.parquet) or the metrics folder "
        "(<out>/metrics)"
    )
    os.mkfifo(tmp_path / "fifo")  # reading it would block for ever: a thread that may hang
    answer: list[tuple] = []
    reader = threading.Thread(
        target=lambda: answer.append(_results_cli(capsys, tmp_path / "fifo")), daemon=True
    )
    reader.start()
    reader.join(timeout=30)
    assert answer, "segstyle results blocked on a FIFO"
    status, out, err = answer[0]
    assert (status, out) == (EXIT_ERROR, "")
    assert err.strip() == (
        f"segstyle: error: {tmp_path / 'fifo'}: not a regular file or folder; give a run file "
        "(<out>/metrics/flow=<flow>/<run>.parquet) or the metrics folder (<out>/metrics)"
    )
    # inside a metrics folder an unreadable run file is still named with its own fix
    (tmp_path / "metrics" / "flow=f").mkdir(parents=True)
    (tmp_path / "metrics" / "flow=f" / "r.parquet").write_text("not parquet")
    status, _, err = _results_cli(capsys, tmp_path / "metrics")
    assert status == EXIT_ERROR and "no Parquet results here yet" in err
    assert "r.parquet: not a readable Parquet file" in caplog.text
    assert "delete it or move it out of" in caplog.text


def test_results_of_a_partial_run_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run([_row("old", 0.9)], tmp_path, "f", "older")
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
    write_run(failed, tmp_path, "f", "bad")
    status, out, err = _results_cli(capsys, tmp_path)
    assert status == 0, err
    assert out.splitlines()[0] == "run brave-otter (bad)"
    assert "failed images:" in out and "InputError: bad" in out
    assert out.rstrip().endswith("no image of this run succeeded (3 failed); fix the errors above")


def test_results_names_the_latest_runs_when_the_asked_one_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segstyle.flows.cli import EXIT_ERROR

    write_run([{**_row("a", 0.5), "flow_run_id": "id-1"}], tmp_path, "f", "id-1")
    write_run([_row("b", 0.5)], tmp_path, "f", "no-id")  # an old row without an id
    status, _, err = _results_cli(capsys, tmp_path, "nope")
    assert status == EXIT_ERROR
    assert "no run named 'nope'; latest runs:" in err and "brave-otter (id-1)" in err


# --- unreadable and foreign files (issue #22) ------------------------------------------------


def _bad_files(metrics: Path, outside: Path) -> list[Path]:
    """Beside a good run: a 0-byte, a truncated and a foreign Parquet file, one with a corrupt
    footer, one with corrupt data behind a good footer, a text file, one whose name holds a
    line break, a link loop and a link to results outside."""
    import pyarrow.parquet as pq

    good = write_run([_row("a", 0.5)], metrics, "f", "good")
    folder = good.parent
    data = good.read_bytes()
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    bad = {
        "empty.parquet": b"",
        "truncated.parquet": data[: len(data) // 2],
        "corrupt.parquet": data[:4] + bytes(len(data) - 8) + data[-4:],
        "pages.parquet": data[:4] + b"\xff" * (footer - 4) + data[footer:],
        "notes.txt": b"image_id,iou\na,0.5\n",
        "two\nlines.parquet": b"PAR1",
    }
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    pq.write_table(pa.table({"name": ["x"], "value": [1.0]}), folder / "foreign.parquet")
    (folder / "loop.parquet").symlink_to("loop.parquet")
    write_run([_row("secret", 0.1)], outside, "f", "elsewhere")
    (folder / "link.parquet").symlink_to(results.run_file(outside, "f", "elsewhere"))
    names = [*bad, "foreign.parquet", "loop.parquet", "link.parquet"]
    return sorted(folder / name for name in names)


def _one_line(path: Path) -> str:
    return str(path).replace("\n", "\\n")


def test_read_metrics_skips_each_bad_file_with_one_warning_line_and_reads_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = tmp_path / "metrics"
    bad = _bad_files(metrics, tmp_path / "outside")
    with pytest.raises(OSError, match="corrupt.parquet"):  # plain pandas stops at a bad file
        pd.read_parquet(metrics)
    with caplog.at_level("WARNING", logger="segstyle_core.results"):
        frame = results.read_metrics(metrics)
    assert list(frame["image_id"]) == ["a"] and set(frame["flow"]) == {"f"}
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == len(bad) and all("\n" not in line for line in lines)
    for path in bad:
        (line,) = [line for line in lines if line.startswith(f"skipped: {_one_line(path)}: ")]
        fixes = ("remove it", "check the path", f"move it out of {metrics}")
        assert line.endswith(fixes), line
    assert any("not a segstyle results file (columns name, value)" in line for line in lines)


def test_segstyle_results_skips_bad_files_in_one_line_each(tmp_path: Path) -> None:
    import subprocess
    import sys

    metrics = tmp_path / "metrics"
    bad = _bad_files(metrics, tmp_path / "outside")
    done = subprocess.run(
        [sys.executable, "-m", "segstyle.flows.cli", "results", "--metrics", str(metrics)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "run brave-otter (brave-otter)"
    assert "(unnamed)" not in done.stdout and "secret" not in done.stdout
    lines = sorted(done.stderr.splitlines())
    assert [line.split(": ")[1] for line in lines] == sorted(_one_line(path) for path in bad)


def test_latest_counts_each_result_once_after_identical_runs() -> None:
    """Four identical nightly runs (same configuration, same images) give the one-run answer;
    a run under another configuration keeps its own rows."""
    import datetime as dt

    from segstyle_core.results import latest

    def run(day: int, config: str, iou: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "config_sha256": config,
                "image_id": ["a", "a", "b"],
                "prompt_index": [0, 1, 0],
                "iou": [iou, iou, iou],
                "started_at": dt.datetime(2026, 12, day, tzinfo=dt.UTC),
            }
        )

    once = run(1, "c1", 0.5)
    four = pd.concat([run(day, "c1", 0.5 + day / 100) for day in (1, 2, 3, 4)])
    assert len(latest(four)) == len(latest(once)) == 3
    assert latest(four)["iou"].tolist() == [0.54, 0.54, 0.54]  # the last run's rows
    both = pd.concat([four, run(5, "c2", 0.9)])
    assert len(latest(both)) == 6
