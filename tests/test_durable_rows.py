"""Durable rows (issue #14, item 4): each image's rows are on disk as soon as it finishes.

Unit checks drive :class:`segstyle_core.results.RunRows` directly (parts, compaction order,
crash recovery at every step, retries, takeover of a killed run's parts, a full disk); the
flow checks SIGKILL a ``segstyle run`` after some images and fill the disk during a run.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from segstyle_core import results
from segstyle_core.errors import StorageError
from tests.test_reliability import CITY, FLOW, CliRuns, _frames, _prompt_count

KEY = "config-a"


def _row(image_id: str, run: str, iou: float = 0.5, prompt: int = 0) -> dict[str, Any]:
    return {
        "run_id": f"name-{run}",
        "flow_run_id": run,
        "image_id": image_id,
        "prompt_index": prompt,
        "iou": iou,
        "status": "ok",
        "config_sha256": KEY,
    }


def _image_rows(image_id: str, run: str, iou: float = 0.5) -> list[dict[str, Any]]:
    """Two prompt rows per image."""
    return [_row(image_id, run, iou, 0), _row(image_id, run, iou, 1)]


def _visible(metrics: Path) -> pd.DataFrame:
    """What a reader gets: plain pandas on the folder (empty when nothing is visible)."""
    if not any(p for p in metrics.rglob("*.parquet") if not _hidden(p, metrics)):
        return pd.DataFrame(columns=["flow_run_id", "image_id", "prompt_index", "iou"])
    return pd.read_parquet(metrics)


def _hidden(path: Path, root: Path) -> bool:
    return any(part[0] in "._" for part in path.relative_to(root).parts)


def _files(metrics: Path) -> list[str]:
    return sorted(str(p.relative_to(metrics)) for p in metrics.rglob("*") if p.is_file())


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    return frame.groupby("image_id").size().to_dict()


@pytest.fixture()
def metrics(tmp_path: Path) -> Path:
    return tmp_path / "metrics ü"


# --- parts and compaction -----------------------------------------------------------------


def test_each_image_is_readable_as_soon_as_it_is_written(metrics: Path) -> None:
    with results.RunRows(metrics, "f", "run1", resume_key=KEY) as durable:
        durable.write_image("zurich_000000_000019", _image_rows("zurich_000000_000019", "run1"))
        assert _counts(_visible(metrics)) == {"zurich_000000_000019": 2}
        durable.write_image("zurich_000001_000019", _image_rows("zurich_000001_000019", "run1"))
        durable.write_image("zurich_000000_000019", _image_rows("zurich_000000_000019", "run1"))
        frame = _visible(metrics)
        assert _counts(frame) == {"zurich_000000_000019": 2, "zurich_000001_000019": 2}
        assert set(frame["flow"]) == {"f"}  # the hive column; ``run1.parts`` adds none
        (partial,) = results.partial_runs(metrics)
        assert (partial.flow, partial.flow_run_id, partial.images) == ("f", "run1", 2)
        assert partial.writing
        parquet = durable.compact()
    assert parquet == results.run_file(metrics, "f", "run1")
    assert _files(metrics) == ["flow=f/run1.parquet"]
    assert _counts(pd.read_parquet(metrics)) == {
        "zurich_000000_000019": 2,
        "zurich_000001_000019": 2,
    }
    assert results.partial_runs(metrics) == []


def test_part_names_are_never_hidden_and_never_partition_keys(metrics: Path) -> None:
    assert results.part_name("aachen_000000_000019") == "aachen_000000_000019.parquet"
    odd = ["_under", ".dot", "a/b", "k=v", "ü"]
    with results.RunRows(metrics, "f", "odd") as durable:
        for image_id in odd:
            part = durable.write_image(image_id, [_row(image_id, "odd")])
            assert (
                part.parent == durable.parts and part.name[0] not in "._" and "=" not in part.name
            )
        assert sorted(_visible(metrics)["image_id"]) == sorted(odd)
        durable.compact()
    assert sorted(pd.read_parquet(metrics)["image_id"]) == sorted(odd)


def test_no_reader_ever_sees_an_image_twice_while_compacting(
    metrics: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshot the folder before and after every rename of the compaction."""
    views: list[pd.DataFrame] = []
    real_replace, real_rename = os.replace, os.rename

    def watching(real: Callable[..., None]) -> Callable[..., None]:
        def rename(src: Any, dst: Any) -> None:
            views.append(_visible(metrics))
            real(src, dst)
            views.append(_visible(metrics))

        return rename

    durable = results.RunRows(metrics, "f", "run1").open()
    for image_id in ("a", "b", "c"):
        durable.write_image(image_id, _image_rows(image_id, "run1"))
    monkeypatch.setattr(os, "replace", watching(real_replace))
    monkeypatch.setattr(os, "rename", watching(real_rename))
    durable.compact()
    monkeypatch.undo()
    assert len(views) >= 4
    for view in views:
        assert not view.duplicated(["image_id", "prompt_index"]).any()
        assert set(_counts(view).values()) <= {2}
    assert _counts(views[0]) == _counts(views[-1]) == {"a": 2, "b": 2, "c": 2}


class _Crash(BaseException):
    """Stands in for SIGKILL between two file operations."""


@pytest.mark.parametrize("step", ["hide parts", "publish file", "remove parts", "after"])
def test_a_crash_at_any_step_of_compaction_loses_and_doubles_nothing(
    metrics: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    durable = results.RunRows(metrics, "f", "run1", resume_key=KEY).open()
    for image_id in ("a", "b"):
        durable.write_image(image_id, _image_rows(image_id, "run1"))
    real_replace, real_rmtree = os.replace, results._rmtree

    def replace(src: Any, dst: Any) -> None:
        if (step == "hide parts" and Path(src) == durable.parts) or (
            step == "publish file" and Path(dst) == durable.final
        ):
            raise _Crash
        real_replace(src, dst)

    def rmtree(path: Path) -> None:
        if step == "remove parts" and path.exists():
            raise _Crash
        real_rmtree(path)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(results, "_rmtree", rmtree)
    with pytest.raises(_Crash):
        durable.compact()
        raise _Crash  # step "after": a crash once everything is done
    monkeypatch.undo()
    durable.close()
    # What a SIGKILL leaves besides: a half-written file and a half-made folder, both hidden.
    (metrics / "flow=f" / ".run1.compacted-x1y2.parquet").write_bytes(b"PAR1 half")
    (metrics / "flow=f" / ".run1.parts.new-x1y2").mkdir()
    frame = _visible(metrics)
    assert not frame.duplicated(["image_id", "prompt_index"]).any()
    assert set(_counts(frame)) <= {"a", "b"}

    # The retry of this flow run recovers, then redoes the images and compacts.
    with results.RunRows(metrics, "f", "run1", resume_key=KEY) as retry:
        assert _counts(_visible(metrics)) == {"a": 2, "b": 2}
        for image_id in ("a", "b"):
            retry.write_image(image_id, _image_rows(image_id, "run1", iou=0.9))
        retry.compact()
    assert [p.name for p in metrics.rglob("*")] == ["flow=f", "run1.parquet"]
    final = pd.read_parquet(metrics)
    assert _counts(final) == {"a": 2, "b": 2} and final["iou"].eq(0.9).all()


def test_a_retry_starts_from_its_file_and_replaces_rows_without_duplicates(
    metrics: Path,
) -> None:
    first = results.RunRows(metrics, "f", "run1", resume_key=KEY).open()
    for image_id in ("a", "b", "c"):
        first.write_image(image_id, _image_rows(image_id, "run1", iou=0.1))
    first.compact()

    with results.RunRows(metrics, "f", "run1", resume_key=KEY) as retry:
        # the earlier attempt's rows stay visible, now as parts, each image once
        assert _counts(_visible(metrics)) == {"a": 2, "b": 2, "c": 2}
        assert not results.run_file(metrics, "f", "run1").exists()
        retry.write_image("b", _image_rows("b", "run1", iou=0.7))
        view = _visible(metrics).set_index(["image_id", "prompt_index"])
        assert view.loc[("b", 0), "iou"] == 0.7 and view.loc[("a", 0), "iou"] == 0.1
        for image_id in ("a", "c"):
            retry.write_image(image_id, _image_rows(image_id, "run1", iou=0.7))
        retry.compact()
    assert _files(metrics) == ["flow=f/run1.parquet"]
    final = pd.read_parquet(metrics)
    assert _counts(final) == {"a": 2, "b": 2, "c": 2} and final["iou"].eq(0.7).all()


def test_write_run_replaces_the_parts_of_its_run(metrics: Path) -> None:
    durable = results.RunRows(metrics, "f", "run1").open()
    durable.write_image("a", _image_rows("a", "run1"))
    durable.close()
    results.write_run(_image_rows("a", "run1") + _image_rows("b", "run1"), metrics, "f", "run1")
    assert _files(metrics) == ["flow=f/run1.parquet"]
    assert _counts(pd.read_parquet(metrics)) == {"a": 2, "b": 2}


# --- killed runs -------------------------------------------------------------------------


def _killed_writer(metrics: Path, run: str, images: list[str], key: str = KEY) -> None:
    """A process that writes ``images`` as parts of ``run`` and SIGKILLs itself."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from segstyle_core import results
        durable = results.RunRows({str(metrics)!r}, "f", {run!r}, resume_key={key!r}).open()
        for image_id in {images!r}:
            durable.write_image(image_id, [
                {{"image_id": image_id, "flow_run_id": {run!r}, "prompt_index": i}}
                for i in (0, 1)
            ])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


def test_a_killed_run_keeps_its_finished_images_and_a_rerun_takes_them_over(
    metrics: Path,
) -> None:
    _killed_writer(metrics, "killed", ["a", "b"])
    frame = _visible(metrics)
    assert _counts(frame) == {"a": 2, "b": 2} and set(frame["flow_run_id"]) == {"killed"}
    (partial,) = results.partial_runs(metrics)
    assert partial.flow_run_id == "killed" and not partial.writing and partial.images == 2

    # A run with another configuration leaves it alone.
    with results.RunRows(metrics, "f", "other", resume_key="config-b") as other:
        assert other.resumed == []
        other.write_image("a", _image_rows("a", "other"))
        other.compact()
    assert [p.flow_run_id for p in results.partial_runs(metrics)] == ["killed"]

    # The rerun of the same configuration: the killed run's rows stay visible, once, until
    # the rerun redoes each image; at the end only the rerun's file remains.
    with results.RunRows(metrics, "f", "rerun", resume_key=KEY) as rerun:
        assert rerun.resumed == ["killed"]
        mine = _visible(metrics).query("flow_run_id != 'other'")
        assert _counts(mine) == {"a": 2, "b": 2}
        for image_id in ("a", "b", "c"):
            rerun.write_image(image_id, _image_rows(image_id, "rerun"))
            mine = _visible(metrics).query("flow_run_id != 'other'")
            assert not mine.duplicated(["image_id", "prompt_index"]).any()
        rerun.compact()
    assert _files(metrics) == ["flow=f/other.parquet", "flow=f/rerun.parquet"]
    rows = results.read_metrics(results.run_file(metrics, "f", "rerun"))
    assert _counts(rows) == {"a": 2, "b": 2, "c": 2} and set(rows["flow_run_id"]) == {"rerun"}


def test_a_live_run_is_never_taken_over(metrics: Path) -> None:
    live = results.RunRows(metrics, "f", "live", resume_key=KEY).open()
    live.write_image("a", _image_rows("a", "live"))
    with results.RunRows(metrics, "f", "second", resume_key=KEY) as second:
        assert second.resumed == []
        second.write_image("a", _image_rows("a", "second"))
        second.compact()
    assert (live.parts / "a.parquet").is_file()
    live.compact()
    assert _files(metrics) == ["flow=f/live.parquet", "flow=f/second.parquet"]


def test_the_same_flow_run_cannot_write_twice_at_once(metrics: Path) -> None:
    with results.RunRows(metrics, "f", "run1"):
        with pytest.raises(StorageError, match="another process is writing the rows"):
            results.RunRows(metrics, "f", "run1").open()


# --- storage errors ----------------------------------------------------------------------


def _full_disk_for(monkeypatch: pytest.MonkeyPatch, victim: str) -> Callable[[Any, Path], None]:
    """Make :func:`results.write_parquet` raise ENOSPC for ``victim``'s part only."""
    real = results.write_parquet

    def write(table: Any, path: Path) -> None:
        if path.parent.name.endswith(results.PARTS_SUFFIX) and path.name.startswith(f".{victim}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(table, path)

    monkeypatch.setattr(results, "write_parquet", write)
    return write


def test_a_full_disk_names_the_part_and_keeps_the_earlier_images(
    metrics: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _full_disk_for(monkeypatch, "b")
    durable = results.RunRows(metrics, "f", "run1").open()
    durable.write_image("a", _image_rows("a", "run1"))
    with pytest.raises(StorageError) as info:
        durable.write_image("b", _image_rows("b", "run1"))
    message = str(info.value)
    assert (
        message == f"{durable.parts / 'b.parquet'}: no space left on device; free space and rerun"
    )
    assert info.value.errno == errno.ENOSPC
    assert _counts(_visible(metrics)) == {"a": 2}
    assert [p.name for p in durable.parts.iterdir() if p.name.endswith(".parquet")] == [
        "a.parquet"
    ]  # no temporary file left
    durable.close()


def test_an_unwritable_metrics_folder_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "metrics"
    blocker.write_text("a file where the metrics folder should be")
    with pytest.raises(StorageError) as info:
        results.RunRows(blocker, "f", "run1").open()
    assert str(info.value).startswith(str(blocker / "flow=f")) and "\n" not in str(info.value)


def test_a_full_disk_while_compacting_names_the_run_file_and_keeps_the_parts(
    metrics: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    durable = results.RunRows(metrics, "f", "run1").open()
    durable.write_image("a", _image_rows("a", "run1"))
    real = results.write_parquet

    def full(table: Any, path: Path) -> None:
        if ".compacted-" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(table, path)

    monkeypatch.setattr(results, "write_parquet", full)
    with pytest.raises(StorageError, match="no space left on device; free space and rerun") as info:
        durable.compact()
    assert str(info.value).startswith(str(results.run_file(metrics, "f", "run1")))
    assert _counts(_visible(metrics)) == {"a": 2}
    assert [p.name for p in metrics.rglob("*") if p.name.startswith(".")] == []
    durable.close()


# --- the flow ----------------------------------------------------------------------------

#: Loaded into ``segstyle run`` subprocesses through PYTHONPATH. SEGSTYLE_TEST_HANG=<marker>:
#: after the second image's part, write the marker and hang, so that the test kills a run
#: with exactly two finished images (a timing-free "SIGKILL after some images").
#: SEGSTYLE_TEST_ENOSPC=<image id>: writing that image's part fails with a full disk.
_HOOKS = """
import errno, os, time
from pathlib import Path
from segstyle_core import results

_write_image, _write_parquet = results.RunRows.write_image, results.write_parquet

def write_image(self, image_id, rows):
    part = _write_image(self, image_id, rows)
    if len(self.written) == 2 and os.environ.get("SEGSTYLE_TEST_HANG"):
        Path(os.environ["SEGSTYLE_TEST_HANG"]).write_text(str(os.getpid()))
        time.sleep(600)
    return part

def write_parquet(table, path):
    victim = os.environ.get("SEGSTYLE_TEST_ENOSPC")
    if victim and path.parent.name.endswith(".parts") and path.name.startswith(f".{victim}."):
        raise OSError(errno.ENOSPC, "No space left on device")
    _write_parquet(table, path)

results.RunRows.write_image = write_image
results.write_parquet = write_parquet
"""


@pytest.fixture()
def hooked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``segstyle run`` subprocesses load :data:`_HOOKS` and log to the console as a user's
    would (the test session's Prefect console level shows errors; the CLI's hides them)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOKS)
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.delenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", raising=False)


@pytest.fixture()
def cli(tmp_path: Path) -> Iterator[CliRuns]:
    runs = CliRuns(tmp_path / "logs")
    yield runs
    for name, process in runs.started.items():
        if process.poll() is None:
            runs.kill(name)


@pytest.fixture(scope="module")
def streets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segstyle_core.demo.dataset import generate_demo_dataset

    base = tmp_path_factory.mktemp("durable") / "data sets" / "städte ü"
    return generate_demo_dataset(base, size=(128, 64), frames_per_city=4, cities=(CITY,))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api", "hooked")
def test_sigkill_after_some_images_keeps_them_and_a_rerun_leaves_one_file(
    streets: Path, tmp_path: Path, cli: CliRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "two images written"
    monkeypatch.setenv("SEGSTYLE_TEST_HANG", str(marker))
    out = tmp_path / "out put"
    killed = cli.start("killed", streets, out)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert killed.poll() is None, (tmp_path / "logs" / "killed.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run wrote no two images in time"
        time.sleep(0.05)
    assert cli.kill("killed") == -signal.SIGKILL

    frames = _frames(streets)
    expected = {f.image_id: _prompt_count(f) for f in frames}
    metrics = out / "metrics"
    partial = pd.read_parquet(metrics)
    finished = [f.image_id for f in frames[:2]]  # the rows loop finishes images in order
    assert _counts(partial) == {image_id: expected[image_id] for image_id in finished}
    assert not partial.duplicated(["image_id", "prompt_index"]).any()
    assert partial["status"].eq("ok").all() and partial["flow_run_id"].nunique() == 1
    assert not list(metrics.glob(f"flow={FLOW}/*.parquet"))  # no run file: it never ended

    monkeypatch.delenv("SEGSTYLE_TEST_HANG")
    cli.start("rerun", streets, out)
    parquet = cli.finish("rerun")
    assert _files(metrics) == [str(parquet.relative_to(metrics))]
    everything = pd.read_parquet(metrics)
    assert not everything.duplicated(["image_id", "prompt_index"]).any()
    assert _counts(everything) == expected
    assert everything["flow_run_id"].nunique() == 1 and everything["status"].eq("ok").all()
    assert [p for p in out.rglob(".*") if p.is_file()] == []


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api", "hooked")
def test_a_full_disk_mid_run_is_one_line_naming_the_part_and_earlier_rows_survive(
    streets: Path, tmp_path: Path, cli: CliRuns, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = _frames(streets)
    victim = frames[2].image_id
    monkeypatch.setenv("SEGSTYLE_TEST_ENOSPC", victim)
    out = tmp_path / "out"
    process = cli.start("full", streets, out)
    assert process.wait(timeout=300) == 2
    error = (tmp_path / "logs" / "full.err").read_text()
    assert (tmp_path / "logs" / "full.out").read_text() == ""  # no Parquet path printed
    metrics = out / "metrics"
    (parts,) = metrics.glob(f"flow={FLOW}/*{results.PARTS_SUFFIX}")
    assert error == (
        f"segstyle: error: {parts / (victim + '.parquet')}: no space left on device; "
        "free space and rerun\n"
    )
    survived = pd.read_parquet(metrics)
    assert _counts(survived) == {f.image_id: _prompt_count(f) for f in frames[:2]}
    assert not list(metrics.glob(f"flow={FLOW}/*.parquet"))  # no run file was written
