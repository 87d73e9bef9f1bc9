"""Durable rows (issues #14 and #22): each image's rows are on disk as soon as it finishes,
and a reader sees each finished image exactly once at every instant.

Unit checks drive :class:`segstyle_core.results.RunRows` directly (parts, compaction, a kill
after every change of the file system and the recovery that follows, retries, takeover of a
killed run's parts, other hosts' runs, several processes at once, a full disk); the flow checks
SIGKILL a ``segstyle run`` after some images and fill the disk during a run.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
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
    """What a reader gets: plain pandas on the folder (no rows when nothing is visible)."""
    frame = pd.read_parquet(metrics)
    if len(frame.columns) == 0:
        return pd.DataFrame(columns=["flow_run_id", "image_id", "prompt_index", "iou"])
    return frame


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


# --- a kill after any step ----------------------------------------------------------------

#: The calls that change the file system (``open`` only with ``O_CREAT``): the steps of the
#: protocol and everything in between (temporary files, each removal of ``rmtree``).
_CHANGES = ("open", "mkdir", "rename", "replace", "symlink", "unlink", "rmdir")
_KILLED = 137


def _start(action: Callable[[], None]) -> int:
    """Run ``action`` in a forked child; return its pid. The child exits 0 when ``action``
    returns, 1 when it raises."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            action()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    return pid


def _exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _dying(changes: int, action: Callable[[], None]) -> None:  # pragma: no cover - a child
    """Run ``action``, and die (``os._exit``, as abrupt as SIGKILL: no cleanup, no
    ``finally``) right after its ``changes``-th change of the file system."""
    count = 0

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def change(*args: Any, **kwargs: Any) -> Any:
            nonlocal count
            result = real(*args, **kwargs)
            if name != "open" or args[1] & os.O_CREAT:
                count += 1
                if count == changes:
                    os._exit(_KILLED)
            return result

        return change

    for name in _CHANGES:
        setattr(os, name, counting(name, getattr(os, name)))
    action()


def _killed_after(changes: int, action: Callable[[], None]) -> bool:
    """Run ``action`` in a child that dies right after its ``changes``-th change of the file
    system; return whether it died before ``action`` was done."""
    code = _exit_code(_start(functools.partial(_dying, changes, action)))
    assert code in (0, _KILLED), f"the writer failed (exit {code})"
    return code == _KILLED


def _leftovers(metrics: Path) -> list[str]:
    """Hidden entries beyond a killed run's linked, unsealed parts folder (its parts and
    ``_run.json``): what the recovery must have finished or removed."""
    wrong = []
    for folder in metrics.glob("flow=*"):
        linked = {os.readlink(p) for p in folder.iterdir() if p.is_symlink()}
        for entry in folder.iterdir():
            if entry.name[0] != ".":
                continue
            if entry.name not in linked or (entry / "_sealed").exists():
                wrong.append(entry.name)
            else:
                temporary = [
                    p.name for p in entry.iterdir() if p.name[0] == "." or p.name == "_link"
                ]
                wrong += [f"{entry.name}/{name}" for name in temporary]
    return wrong


def _state(folder: Path) -> str:
    """Where run ``r``'s compaction stands: its entry (file, link, none), then ``sealed``,
    ``staged`` for its parts folders and ``trash`` for a retired one."""
    entry = folder / "r.parquet"
    words = ["link" if entry.is_symlink() else "file" if entry.exists() else "none"]
    for path in sorted(folder.glob(".r.*")):
        words += [
            w
            for w, name in (("sealed", "_sealed"), ("staged", "_compacted.parquet"))
            if (path / name).exists()
        ]
        words += ["trash"] if ".trash-" in path.name else []
    return " ".join(words)


def _setup_takeover(metrics: Path) -> None:
    """Another configuration's finished run, and a killed run of this one with images a, b."""
    with results.RunRows(metrics, "f", "other", resume_key="config-b") as other:
        other.write_image("x", _image_rows("x", "other"))
        other.compact()
    killed = results.RunRows(metrics, "f", "killed", resume_key=KEY).open()
    for image_id in ("a", "b"):
        killed.write_image(image_id, _image_rows(image_id, "killed"))
    killed.close()  # what a kill leaves: the parts, no lock


def _setup_retry(metrics: Path) -> None:
    """A finished attempt of flow run ``r`` with images a, b, c."""
    with results.RunRows(metrics, "f", "r", resume_key=KEY) as first:
        for image_id in ("a", "b", "c"):
            first.write_image(image_id, _image_rows(image_id, "r", iou=0.1))
        first.compact()


def _setup_killed_attempt(metrics: Path) -> None:
    """A killed attempt of flow run ``r`` that finished image a."""
    attempt = results.RunRows(metrics, "f", "r", resume_key=KEY).open()
    attempt.write_image("a", _image_rows("a", "r", iou=0.1))
    attempt.close()


#: scenario: (the folder before, the images the run writes, images finished before it starts)
_SCENARIOS = {
    "new run taking over a killed one": (_setup_takeover, ("a", "b", "c"), {"a", "b"}),
    "retry of a finished run": (_setup_retry, ("b",), {"a", "b", "c"}),
    "retry of a killed attempt": (_setup_killed_attempt, ("a", "b"), {"a"}),
}


def _write_r(metrics: Path, images: Sequence[str], done: Path) -> None:
    """Flow run ``r``: write ``images`` (each one's id appended to ``done`` once written), then
    compact."""
    with results.RunRows(metrics, "f", "r", resume_key=KEY) as durable:
        for image_id in images:
            durable.write_image(image_id, _image_rows(image_id, "r", iou=0.9))
            with done.open("a") as log:
                log.write(image_id + "\n")
        durable.compact()


@pytest.mark.parametrize("scenario", list(_SCENARIOS))
def test_a_kill_after_any_change_loses_and_doubles_no_finished_image(
    tmp_path: Path, scenario: str
) -> None:
    """Kill the run after its 1st, 2nd, ... change of the file system, until it finishes.
    After each kill, plain pandas reads every finished image exactly once; ``read_metrics``
    then finishes or removes what the kill left, and the next run leaves no hidden file."""
    setup, images, finished_before = _SCENARIOS[scenario]
    changes, states = 0, set()
    while True:
        changes += 1
        metrics = tmp_path / str(changes) / "metrics"
        setup(metrics)
        done = tmp_path / str(changes) / "done"
        done.touch()

        killed = _killed_after(changes, functools.partial(_write_r, metrics, images, done))
        states.add(_state(metrics / "flow=f"))
        finished = finished_before | set(done.read_text().split())
        for frame in (_visible(metrics), results.read_metrics(metrics)):
            mine = frame[frame["flow_run_id"] != "other"]
            counts = _counts(mine)
            assert set(counts.values()) <= {2}, (changes, counts)  # never an image twice
            assert finished <= set(counts) <= finished | set(images), (changes, counts)
            if scenario.startswith("new run"):
                assert _counts(frame[frame["flow_run_id"] == "other"]) == {"x": 2}
        assert _leftovers(metrics) == [], changes
        if not killed:
            break
        with results.RunRows(metrics, "f", "next", resume_key=KEY) as after:
            after.write_image("c", _image_rows("c", "next"))
            after.compact()
        hidden = [p.name for p in (metrics / "flow=f").iterdir() if p.name[0] == "."]
        assert hidden == [] and not any(p.is_symlink() for p in metrics.rglob("*")), changes
        assert finished <= set(_visible(metrics).query("flow_run_id != 'other'")["image_id"])
    # the kills fell between every two steps of the compaction, and before it
    assert {"link", "link sealed", "link sealed staged", "file sealed", "file trash"} <= states
    assert _files(metrics) == sorted(
        ["flow=f/r.parquet"] + (["flow=f/other.parquet"] if scenario.startswith("new") else [])
    )
    final = pd.read_parquet(results.run_file(metrics, "f", "r"))
    assert _counts(final) == dict.fromkeys(sorted(finished_before | set(images)), 2)


def test_a_kill_of_an_earlier_version_between_its_renames_is_finished(metrics: Path) -> None:
    """What segstyle's earlier layout left when killed between its two compaction renames:
    the hidden parts folder and the compacted file, and no ``<id>.parquet``."""
    folder = metrics / "flow=f"
    with results.RunRows(metrics, "f", "old") as old:
        for image_id in ("a", "b"):
            old.write_image(image_id, _image_rows(image_id, "old"))
        parts = old.parts
    parts.rename(folder / ".old.parts")
    (folder / "old.parquet").unlink()
    (folder / ".old.compacted-k2x9.parquet").write_bytes(b"PAR1 half")
    assert _visible(metrics).empty
    assert _counts(results.read_metrics(metrics)) == {"a": 2, "b": 2}
    assert _files(metrics) == ["flow=f/old.parquet"]


def test_another_hosts_run_is_left_alone_until_sealed_then_finished(metrics: Path) -> None:
    """No lock reaches across hosts: an unsealed folder made elsewhere is never touched."""
    folder = metrics / "flow=f"
    remote = results.RunRows(metrics, "f", "remote").open()
    remote.write_image("a", _image_rows("a", "remote"))
    remote.close()
    elsewhere = folder / ".remote.parts-00000000-k2x9"
    remote.parts.rename(elsewhere)
    (folder / "remote.parquet").unlink()
    (folder / "remote.parquet").symlink_to(elsewhere.name)
    (folder / ".remote.lock").touch()
    before = _files(metrics)
    assert _counts(results.read_metrics(metrics)) == {"a": 2}
    assert _files(metrics) == before
    (partial,) = results.partial_runs(metrics)
    assert partial.writing  # not knowable from here: assume it is
    with results.RunRows(metrics, "f", "local", resume_key=None) as local:
        local.write_image("b", _image_rows("b", "local"))
        local.compact()
    assert _files(metrics) == sorted([*before, "flow=f/local.parquet"])
    (elsewhere / "_sealed").touch()  # the remote run finished its images, then was killed
    assert _counts(results.read_metrics(metrics)) == {"a": 2, "b": 2}
    assert _files(metrics) == ["flow=f/local.parquet", "flow=f/remote.parquet"]


# --- several processes at once -----------------------------------------------------------


def _write_images(metrics: Path, run: str, images: int) -> None:
    """Flow run ``run``: an image every 20 ms or so, then compact."""
    with results.RunRows(metrics, "f", run, resume_key=run) as durable:
        for index in range(images):
            durable.write_image(f"i{index}", _image_rows(f"i{index}", run))
            time.sleep(0.02)
        durable.compact()


def _read_while(pids: list[int], metrics: Path) -> list[int]:
    """Read the folder (plain pandas and :func:`results.read_metrics`) until the processes
    ``pids`` end, asserting that no read shows an image of a run twice; return their exit
    codes."""
    codes: dict[int, int] = {}
    while len(codes) < len(pids):
        for pid in set(pids) - set(codes):
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                codes[pid] = os.waitstatus_to_exitcode(status)
        try:
            frames = [_visible(metrics)]
        except OSError:  # pandas listed a part that was then published: no instant's state
            frames = []
        with contextlib.suppress(results.InputError):  # nothing visible yet
            frames.append(results.read_metrics(metrics))
        for frame in frames:
            assert not frame.duplicated(["flow_run_id", "image_id", "prompt_index"]).any()
    return [codes[pid] for pid in pids]


def test_several_writers_and_readers_at_once_never_see_an_image_twice(metrics: Path) -> None:
    runs = [f"w{index}" for index in range(4)]
    pids = [_start(functools.partial(_write_images, metrics, run, 30)) for run in runs]
    assert _read_while(pids, metrics) == [0] * len(runs)
    assert _files(metrics) == [f"flow=f/{run}.parquet" for run in runs]
    counts = pd.read_parquet(metrics).groupby("flow_run_id").size().to_dict()
    assert counts == dict.fromkeys(runs, 60)


def test_many_processes_finishing_the_same_sealed_runs_publish_each_once(metrics: Path) -> None:
    """As hosts that share a folder would: each sealed run is finished by whoever is first."""
    runs = [f"s{index}" for index in range(6)]
    for run in runs:
        durable = results.RunRows(metrics, "f", run).open()
        for image_id in ("a", "b", "c"):
            durable.write_image(image_id, _image_rows(image_id, run))
        (durable.parts / "_sealed").touch()  # then killed before it staged the file
        durable.close()
    pids = [_start(functools.partial(results.finish_ended_runs, metrics)) for _ in range(4)]
    assert _read_while(pids, metrics) == [0] * 4
    assert _files(metrics) == [f"flow=f/{run}.parquet" for run in runs]
    assert not any(p.is_symlink() for p in metrics.rglob("*"))
    assert pd.read_parquet(metrics).groupby("flow_run_id").size().to_dict() == dict.fromkeys(
        runs, 6
    )


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
        assert results.run_file(metrics, "f", "run1").resolve() == retry.parts
        retry.write_image("b", _image_rows("b", "run1", iou=0.7))
        view = _visible(metrics).set_index(["image_id", "prompt_index"])
        assert view.loc[("b", 0), "iou"] == 0.7 and view.loc[("a", 0), "iou"] == 0.1
        for image_id in ("a", "c"):
            retry.write_image(image_id, _image_rows(image_id, "run1", iou=0.7))
        retry.compact()
    assert _files(metrics) == ["flow=f/run1.parquet"]
    final = pd.read_parquet(metrics)
    assert _counts(final) == {"a": 2, "b": 2, "c": 2} and final["iou"].eq(0.7).all()


def test_a_retry_replaces_the_parts_its_killed_attempt_left(metrics: Path) -> None:
    durable = results.RunRows(metrics, "f", "run1").open()
    durable.write_image("a", _image_rows("a", "run1"))
    durable.close()  # as a SIGKILL would: the lock is gone, the part stays
    with results.RunRows(metrics, "f", "run1") as retry:
        for image_id in ("a", "b"):
            retry.write_image(image_id, _image_rows(image_id, "run1"))
        retry.compact()
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
        if ".parts-" in path.parent.name and path.name.startswith(f".{victim}."):
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


def test_a_full_disk_while_compacting_keeps_the_parts_and_the_next_reader_finishes_the_file(
    metrics: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    durable = results.RunRows(metrics, "f", "run1").open()
    durable.write_image("a", _image_rows("a", "run1"))
    real = results.write_parquet

    def full(table: Any, path: Path) -> None:
        if path.name.startswith("._compacted."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(table, path)

    monkeypatch.setattr(results, "write_parquet", full)
    with pytest.raises(StorageError) as info:
        durable.compact()
    assert str(info.value) == (
        f"{durable.parts / '_compacted.parquet'}: no space left on device; free space and rerun"
    )
    durable.close()
    assert _counts(_visible(metrics)) == {"a": 2}
    assert sorted(p.name for p in durable.parts.iterdir()) == ["_run.json", "_sealed", "a.parquet"]
    monkeypatch.undo()  # space again: whoever reads next finishes the run's file
    assert _counts(results.read_metrics(metrics)) == {"a": 2}
    assert _files(metrics) == ["flow=f/run1.parquet"]
    assert not any(p.is_symlink() for p in metrics.rglob("*"))


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
    self.test_written = getattr(self, "test_written", 0) + 1
    if self.test_written == 2 and os.environ.get("SEGSTYLE_TEST_HANG"):
        Path(os.environ["SEGSTYLE_TEST_HANG"]).write_text(str(os.getpid()))
        time.sleep(600)
    return part

def write_parquet(table, path):
    victim = os.environ.get("SEGSTYLE_TEST_ENOSPC")
    if victim and ".parts-" in path.parent.name and path.name.startswith(f".{victim}."):
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
    run_files = [p for p in metrics.glob(f"flow={FLOW}/*.parquet") if p.is_file()]
    assert run_files == []  # only the link to the parts: the run never ended

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
    (parts,) = metrics.glob(f"flow={FLOW}/.*.parts-*")
    assert error == (
        f"segstyle: error: {parts / (victim + '.parquet')}: no space left on device; "
        "free space and rerun\n"
    )
    survived = pd.read_parquet(metrics)
    assert _counts(survived) == {f.image_id: _prompt_count(f) for f in frames[:2]}
    run_files = [p for p in metrics.glob(f"flow={FLOW}/*.parquet") if p.is_file()]
    assert run_files == []  # only the link to the parts: no run file was written
