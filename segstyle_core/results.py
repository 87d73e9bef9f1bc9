"""The per-image results table: its Parquet schema, durable per-image parts, one file per run.

Layout under ``<metrics_dir>/flow=<flow name>/``, for a flow run ``<id>``:

- ``<id>.parquet``: the run's rows (see :func:`run_file`). A finished run's is one plain
  Parquet file; a running or killed run's is a symbolic link to its parts folder.
- ``.<id>.parts-<host>-<random>/``: the parts folder. One ``<image>.parquet`` per finished
  image (see :func:`part_name`), ``_run.json`` (the run's id, ``resume_key`` and start), and
  once the run has finished every image, ``_sealed`` and ``_compacted.parquet``. ``<host>``:
  the first 8 hex digits of the SHA-256 of the host name that made the folder.
- ``.<id>.lock``: ``flock``-ed by the process that writes the run.
- ``.<id>.trash-<random>/``: a retired parts folder on its way out.

pyarrow's dataset discovery skips every name that starts with ``.`` or ``_``, so
``pandas.read_parquet(metrics_dir)`` reads the ``<id>.parquet`` entries only (following the
links): each finished image of every run, running, killed or complete, exactly once (the hive
folder adds a ``flow`` column; ``<id>.parquet``, without ``=``, adds none).

**The protocol.** Each step is one atomic operation, so between any two a reader sees every
finished image's rows exactly once; a kill after any step loses and doubles nothing.

1. *open*: lock ``.<id>.lock``; make a parts folder (a retry of a finished run first writes
   its file's rows into it, a part per image); make a link to it inside it and
   ``os.replace`` that onto ``<id>.parquet``: the link appears, or replaces the file by the
   same rows as parts. A retry of a killed attempt goes on with that attempt's folder.
2. *take over* (only with a ``resume_key``): for each killed run of this flow with the same
   key made on this host, rename each of its parts this run lacks into this run's folder,
   unlink its link (its other parts are images this run has), retire its folder.
3. *write an image*: its part is written under a hidden name in the folder and renamed into
   place, replacing the image's earlier part, if any.
4. *seal*: create ``_sealed``; the run writes no more parts.
5. *stage*: write every part's rows (oldest part first) to ``_compacted.parquet`` through a
   hidden temporary file.
6. *publish*: ``os.replace`` ``_compacted.parquet`` onto ``<id>.parquet``: the file takes
   the link's place, so the rows go from parts to file in one step.
7. *retire*: rename the parts folder to ``.<id>.trash-<random>`` and remove that; remove the
   lock.

**Recovery** (:func:`finish_ended_runs`, run by every :class:`RunRows` when it opens and by
:func:`read_metrics` before it reads): whoever comes next finishes a sealed folder from
wherever it stopped (steps 5 to 7; step 5 gives the same rows whoever does it, and step 6
renames a file that only one process can rename), retires a sealed folder that no link names,
and removes trash. An unsealed folder belongs to its writer: only when it was made on this
host, and the recovery can take the run's lock (its process is gone), does it remove the
folder's hidden temporary files, retire it if no link names it (or the link and the folder if
it holds no part), and remove the lock. So several hosts can write runs into one shared folder
without locks across hosts: what another host's run leaves is touched only once sealed, and
then only by steps that any process may repeat. A kill of the recovery leaves one of the states
above. A reader that lists a folder and then reads its files may find a part gone (published
meanwhile): plain pandas then raises, :func:`read_metrics` lists again.

A retried flow run (same flow run id) goes on from its own rows: each image it redoes
replaces its part, and its file holds every part, redone or not. Folders of earlier segstyle
versions: their ``<id>.parts/`` folders read as before, and the hidden ``.<id>.parts/`` plus
``.<id>.compacted-*.parquet`` a compaction killed between its renames left are finished into
``<id>.parquet`` by the recovery.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from segstyle_core.errors import (
    InputError,
    SegstyleError,
    StorageError,
    os_error_message,
    storage_error,
)
from segstyle_core.fileio import FILE_MODE, atomic_write_with, write_json_atomic

_log = logging.getLogger(__name__)


#: 2: added ``image_iou``/``image_dice``. 3: added ``mask_rle`` and
#: ``cached_<stage>``. Files of older versions read
#: with the columns they lack empty (see :func:`read_metrics`).
SCHEMA_VERSION = 3

_STAGES = ("gt", "segment", "stylize", "composite", "figures")

#: One row per image and prompt (an image that failed before prompting has one row).
SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("run_id", pa.string()),  # human-readable flow run name
        ("flow_run_id", pa.string()),
        ("image_id", pa.string()),
        ("city", pa.string()),
        ("split", pa.string()),
        ("classes", pa.string()),  # comma-joined, lower case: "car,person"
        ("prompt_index", pa.int32()),
        ("prompt_kind", pa.string()),  # box | points | box+points | auto
        ("prompt_box", pa.list_(pa.float64())),  # XYXY, original pixels
        ("prompt_points", pa.list_(pa.list_(pa.float64()))),  # [[x, y, label], ...]
        ("instance_id", pa.int64()),
        ("instance_class", pa.string()),
        ("segmenter", pa.string()),
        ("segmenter_variant", pa.string()),
        ("segmenter_weights_sha256", pa.string()),
        ("segment_notes", pa.string()),
        ("stylizer", pa.string()),
        ("stylizer_variant", pa.string()),
        ("stylizer_weights_sha256", pa.string()),
        ("style_name", pa.string()),  # the style of this row's class (per-class styles)
        ("style_sha256", pa.string()),
        ("mode", pa.string()),
        ("mask_score", pa.float64()),
        ("iou", pa.float64()),
        ("dice", pa.float64()),
        ("precision", pa.float64()),
        ("recall", pa.float64()),
        ("iou_instance", pa.float64()),
        ("dice_instance", pa.float64()),
        ("precision_instance", pa.float64()),
        ("recall_instance", pa.float64()),
        ("image_iou", pa.float64()),  # union of the image's masks vs the class GT
        ("image_dice", pa.float64()),
        ("pred_area", pa.int64()),
        ("gt_area", pa.int64()),
        ("instance_area", pa.int64()),
        # seconds spent on each stage in this run (a cache hit: the lookup; stylize: all the
        # image's styles) and whether the stage's result came from the run folder's cache
        *[(f"seconds_{stage}", pa.float64()) for stage in _STAGES],
        *[(f"cached_{stage}", pa.bool_()) for stage in _STAGES],
        ("status", pa.string()),  # ok | failed
        ("error", pa.string()),
        ("image_path", pa.string()),
        ("mask_path", pa.string()),
        # the prompt's own mask as COCO RLE JSON ({"size": [H, W], "counts": str}; SAM's
        # coco_rle format): segstyle_core.rle.decode_mask or pycocotools.mask.decode reads it
        ("mask_rle", pa.string()),
        ("stylized_path", pa.string()),  # the image's first style's painting
        ("composite_path", pa.string()),
        ("panel_path", pa.string()),
        ("config_sha256", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)

COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


#: The first 8 hex digits of the SHA-256 of this host's name (in parts folders' names).
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_MANIFEST = "_run.json"
_SEAL = "_sealed"
_STAGED = "_compacted.parquet"
_LINK = "_link"
#: The hidden names of the layout (module docstring); ``lastgroup`` tells which one. ``legacy``
#: and ``compacted`` are what earlier versions' killed compactions left.
_HIDDEN = re.compile(
    r"\.(?P<run>.+)\.(?:parts-(?P<host>[0-9a-f]{8})-[^.]+|(?P<trash>trash)-[^.]+|(?P<lock>lock)"
    r"|(?P<legacy>parts)|(?P<compacted>compacted)-[^.]+\.parquet)"
)
#: errnos of a file or folder another process finished and removed first
_GONE = (errno.ENOENT, errno.ENOTDIR)


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Fill missing columns with nulls and reject unknown ones (a typo must not vanish)."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}; add them to results.SCHEMA")
    full = {name: row.get(name) for name in COLUMNS}
    full["schema_version"] = SCHEMA_VERSION
    return full


def _table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([normalise_row(r) for r in rows], schema=SCHEMA)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` (the one place results touch the Parquet writer)."""
    pq.write_table(table, path)


def run_file(metrics_dir: str | os.PathLike[str], flow_name: str, flow_run_id: str) -> Path:
    """``<metrics_dir>/flow=<flow_name>/<flow_run_id>.parquet``: the run's rows (a file once
    the run has finished, a link to its parts folder before)."""
    return Path(metrics_dir) / f"flow={flow_name}" / f"{flow_run_id}.parquet"


def part_name(image_id: str) -> str:
    """File name of an image's part: the id percent-encoded, never hidden (``.``/``_``)."""
    if not image_id:
        raise ValueError("an image id is empty; every row needs one")
    name = urllib.parse.quote(image_id, safe="")
    if name[0] in "._":
        name = f"%{ord(name[0]):02X}{name[1:]}"
    return f"{name}.parquet"


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Turn any OSError into a :class:`StorageError` that names ``path`` and the fix."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(exc, path) from exc


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` through a hidden temporary file renamed into place."""
    atomic_write_with(path, lambda tmp: write_parquet(table, tmp))


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# ----------------------------------------------------------------------------- reading


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _printable(line: str) -> str:
    """``line`` fit for one line of a terminal: control characters and the undecodable bytes
    of file names escaped."""
    text = line.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _check(file: Path, folder: Path) -> None:
    """Check that ``file`` is a Parquet file of segstyle's results (its footer and schema).

    Raises:
        InputError: not a readable Parquet file, or not segstyle's results (another schema):
            one line naming the file and the fix (move it out of ``folder``).
        FileNotFoundError: the file vanished (a run published or retired its parts folder):
            list the folder again.
    """
    try:
        schema = pq.read_schema(file)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(file, folder, exc) from exc
    names = schema.names
    ours = "schema_version" in names and "image_id" in names and set(names) <= set(COLUMNS)
    if ours:
        try:
            schema.empty_table().cast(pa.schema([SCHEMA.field(name) for name in names]))
        except pa.ArrowException:
            ours = False
    if not ours:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise InputError(
            f"{file}: not a segstyle results file (columns {shown}); move it out of {folder}"
        )


def _unreadable(file: Path, folder: Path, exc: BaseException) -> Exception:
    """The error for ``file`` that failed to read with ``exc``: :class:`FileNotFoundError`
    when it is gone, else an :class:`InputError` naming it and the fix."""
    if not file.is_file():
        return FileNotFoundError(errno.ENOENT, "vanished while reading", str(file))
    return InputError(
        f"{file}: not a readable Parquet file ({_first_line(exc)}); delete it or move it out "
        f"of {folder}"
    )


def _usable(files: Sequence[Path], folder: Path, skipped: list[str]) -> list[Path]:
    """``files`` that pass :func:`_check`; each other one adds its line to ``skipped``.

    Raises:
        FileNotFoundError: a file vanished: list the folder again.
    """
    usable = []
    for file in files:
        try:
            _check(file, folder)
            usable.append(file)
        except InputError as exc:
            skipped.append(str(exc))
    return usable


def _read_files(usable: Sequence[Path], folder: Path, skipped: list[str]) -> pa.Table:
    """The rows of :func:`_usable` results files as one table of :data:`SCHEMA` (columns that
    files of older schema versions lack are empty), in the files' order. A file whose data
    fails to read is left out with a line in ``skipped``.

    Raises:
        FileNotFoundError: a file vanished: list the folder again.
    """
    try:  # all at once; one by one only to find a file whose data is bad behind a good footer
        return ds.dataset([str(f) for f in usable], schema=SCHEMA, format="parquet").to_table()
    except (pa.ArrowException, OSError):
        pass
    tables = [SCHEMA.empty_table()]
    for file in usable:
        try:
            tables.append(ds.dataset(str(file), schema=SCHEMA, format="parquet").to_table())
        except (pa.ArrowException, OSError) as exc:
            error = _unreadable(file, folder, exc)
            if isinstance(error, FileNotFoundError):
                raise error from exc
            skipped.append(str(error))
    return pa.concat_tables(tables)


def _parts_in(parts: Path) -> list[Path]:
    """The parts in a parts folder (regular files, not hidden), oldest first, then by name."""
    found = [
        (entry.stat(follow_symlinks=False).st_mtime_ns, Path(entry.path))
        for entry in os.scandir(parts)
        if entry.name[0] not in "._" and entry.is_file(follow_symlinks=False)
    ]
    return [path for _, path in sorted(found)]


def _read_parts(parts: Path) -> pa.Table:
    """The rows of the parts in the parts folder ``parts``, oldest first; an unusable part is
    left out with a warning line."""
    skipped: list[str] = []
    table = _read_files(_usable(_parts_in(parts), parts, skipped), parts, skipped)
    for line in skipped:
        _log.warning("skipped: %s", _printable(line))
    return table


# ----------------------------------------------------------------------------- locks


def _lock(path: Path, create: bool) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path``; ``None`` when a live process holds it
    (or, without ``create``, when there is no such file). After locking, checks that ``path``
    still names the locked file (it may have been removed in between: then tries again)."""
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), FILE_MODE)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except (BlockingIOError, FileNotFoundError):
            pass  # held (or probed by _held for an instant), or removed: try again
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        time.sleep(0.02)
    return None


def _held(path: Path) -> bool:
    """Whether a live process holds the ``flock`` of the lock file ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _made_here(parts: Path) -> bool:
    """Whether the parts folder ``parts`` was made on this host (its name says)."""
    match = _HIDDEN.fullmatch(parts.name)
    return match is not None and match["host"] == _HOST


def _manifest(parts: Path) -> tuple[str, str | None, str]:
    """``(flow_run_id, resume_key, opened_at)`` from a parts folder's ``_run.json``."""
    try:
        value = json.loads((parts / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        value = None
    if not isinstance(value, dict):
        value = {}
    return (
        str(value.get("flow_run_id", "")),
        value.get("resume_key"),
        str(value.get("opened_at", "")),
    )


# ----------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class _Run:
    """The files of one flow run in its flow folder (module docstring)."""

    folder: Path
    run_id: str

    @property
    def entry(self) -> Path:
        return self.folder / f"{self.run_id}.parquet"

    @property
    def lock(self) -> Path:
        return self.folder / f".{self.run_id}.lock"

    def linked(self) -> Path | None:
        """The parts folder ``<id>.parquet`` links to; ``None`` for a file, nothing, or a link
        of another kind."""
        try:
            target = os.readlink(self.entry)
        except OSError:
            return None
        match = _HIDDEN.fullmatch(target)
        if match is None or match.lastgroup != "host" or match["run"] != self.run_id:
            return None
        return self.folder / target

    def new_parts(self) -> Path:
        """A new, empty parts folder (hidden: no link names it yet)."""
        return Path(tempfile.mkdtemp(prefix=f".{self.run_id}.parts-{_HOST}-", dir=self.folder))

    def show(self, parts: Path) -> None:
        """Put a link to ``parts`` in place of ``<id>.parquet``, in one step."""
        link = parts / _LINK
        _unlink(link)
        os.symlink(parts.name, link)
        os.replace(link, self.entry)

    def finish(self, parts: Path) -> None:
        """Steps 5 to 7 for the sealed ``parts``, from wherever they stopped; a step that
        another process did first is skipped.

        Raises:
            StorageError: a step failed (one line naming the file and the fix); the rows stay
                readable as parts, and any later run or reader finishes them.
        """
        try:
            if self.linked() == parts:
                staged = parts / _STAGED
                if not staged.exists():
                    _write_atomic(_read_parts(parts), staged)
                os.replace(staged, self.entry)
        except OSError as exc:
            if exc.errno not in _GONE:
                if isinstance(exc, StorageError):
                    raise
                raise storage_error(exc, self.entry) from exc
        self.retire(parts)

    def retire(self, parts: Path) -> None:
        """Rename ``parts`` to a trash name (one step), then remove it."""
        trash = self.folder / f".{self.run_id}.trash-{secrets.token_hex(6)}"
        try:
            os.rename(parts, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def recover(self, leftovers: Sequence[tuple[Path, str | None]]) -> None:
        """Recovery (module docstring) for this run's hidden ``leftovers``: ``(path, kind)``,
        ``kind`` the name of the group of :data:`_HIDDEN` its name matched last (``host``:
        a parts folder). What is not sealed is touched only while holding the run's lock, so
        never while its process (on this host) lives."""
        linked = self.linked()
        unsealed = []
        for path, kind in leftovers:
            if kind == "host" and (path / _SEAL).exists():
                if path == linked:
                    self.finish(path)
                else:
                    self.retire(path)
            elif kind == "host":
                unsealed.append(path)
            elif kind == "trash":
                shutil.rmtree(path, ignore_errors=True)
            elif kind == "compacted":
                _unlink(path)
        if not all(map(_made_here, unsealed)):  # another host's run: its lock is not ours
            return
        fd = None if _held(self.lock) else _lock(self.lock, create=True)
        if fd is None:  # the run is live
            return
        try:
            linked = self.linked()
            for path in unsealed:
                if path == linked and _parts_in(path):  # a killed run's rows: keep them
                    for leftover in path.iterdir():
                        if leftover.name[0] == "." or leftover.name == _LINK:
                            _unlink(leftover)
                    continue
                if path == linked:  # a killed run without rows
                    _unlink(self.entry)
                self.retire(path)
            for path, kind in leftovers:
                if kind == "legacy":
                    if not os.path.lexists(self.entry):
                        _write_atomic(_read_parts(path), self.entry)
                    shutil.rmtree(path, ignore_errors=True)
        finally:
            _unlink(self.lock)
            os.close(fd)


def finish_ended_runs(metrics_dir: str | os.PathLike[str]) -> None:
    """The recovery (module docstring) in every ``flow=*`` folder of ``metrics_dir`` (or in
    ``metrics_dir`` itself when it is one): what killed runs left is finished or removed.

    A run whose files cannot be fixed (read-only folder, full disk) is one warning line; the
    other runs go on.
    """
    root = Path(metrics_dir)
    folders = [root] if root.name.startswith("flow=") else sorted(root.glob("flow=*"))
    for folder in folders:
        found: dict[str, list[tuple[Path, str | None]]] = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    match = _HIDDEN.fullmatch(entry.name)
                    if match and not entry.is_symlink():
                        found.setdefault(match["run"], []).append(
                            (Path(entry.path), match.lastgroup)
                        )
        except OSError:  # not a folder, or gone
            continue
        for run_id, leftovers in sorted(found.items()):
            try:
                _Run(folder, run_id).recover(leftovers)
            except OSError as exc:
                line = f"could not finish the rows of flow run {run_id}: {os_error_message(exc)}"
                _log.warning("%s", _printable(line))


# ----------------------------------------------------------------------------- durable rows


class RunRows:
    """The durable rows of one flow run: a part per image as it finishes, one file at the end.

    Use as a context manager around the loop that finishes images::

        with RunRows(metrics, flow_name, flow_run_id, resume_key=config_sha256) as durable:
            for image in images:
                durable.write_image(image_id, rows)
            parquet = durable.compact()

    Opening runs the recovery (:func:`finish_ended_runs`), locks the run, links its parts
    folder in place of ``<flow_run_id>.parquet`` (a finished attempt's file split back into
    parts) and takes over the parts of killed runs of the same flow with the same
    ``resume_key`` (module docstring, steps 1 and 2). Every OS error names the file and what
    to do (:class:`StorageError`).
    """

    def __init__(
        self,
        metrics_dir: str | os.PathLike[str],
        flow_name: str,
        flow_run_id: str,
        resume_key: str | None = None,
    ) -> None:
        self.metrics_dir = Path(metrics_dir)
        self.final = run_file(metrics_dir, flow_name, flow_run_id)
        self.flow_run_id = flow_run_id
        self.resume_key = resume_key
        #: this attempt's parts folder (set by :meth:`open`)
        self.parts: Path
        #: flow run ids of killed runs whose parts this run took over
        self.resumed: list[str] = []
        self._run = _Run(self.final.parent, flow_run_id)
        self._lock_fd: int | None = None

    def __enter__(self) -> RunRows:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> RunRows:
        """Recover, lock, link the parts folder in place, take over killed runs' parts."""
        if self._lock_fd is not None:
            return self
        with _naming(self._run.folder):
            self._run.folder.mkdir(parents=True, exist_ok=True)
        finish_ended_runs(self.metrics_dir)
        with _naming(self._run.lock):
            self._lock_fd = _lock(self._run.lock, create=True)
        if self._lock_fd is None:
            raise StorageError(
                f"{self.final}: another process is writing the rows of flow run "
                f"{self.flow_run_id}; wait for it to finish or stop it, then retry"
            )
        try:
            with _naming(self.final):
                self.parts = self._attach()
                if self.resume_key is not None:
                    self._take_over_killed_runs()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Release the lock (the parts stay until :meth:`compact`)."""
        if self._lock_fd is not None:
            _unlink(self._run.lock)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _attach(self) -> Path:
        """This attempt's parts folder, linked in place of ``<id>.parquet`` (step 1)."""
        linked = self._run.linked()
        if linked is not None and (linked / _SEAL).exists():  # the recovery failed just now
            self._run.finish(linked)
            linked = None
        if linked is not None:  # a killed attempt's parts: go on with them
            self._write_manifest(linked)
            return linked
        if os.path.lexists(self.final) and (self.final.is_symlink() or not self.final.is_file()):
            raise StorageError(
                f"{self.final}: not a results file of segstyle; move it out of the metrics "
                "folder and rerun"
            )
        parts = self._run.new_parts()
        self._write_manifest(parts)
        if self.final.exists():  # a finished attempt: its rows become parts
            skipped: list[str] = []
            table = _read_files(
                _usable([self.final], self._run.folder, skipped), self._run.folder, skipped
            )
            if skipped:
                raise InputError(skipped[0])
            for image_id in pc.unique(table["image_id"]).to_pylist():
                if image_id:
                    image_rows = table.filter(pc.equal(table["image_id"], image_id))
                    write_parquet(image_rows, parts / part_name(image_id))
        self._run.show(parts)
        return parts

    def _write_manifest(self, parts: Path) -> None:
        write_json_atomic(
            parts / _MANIFEST,
            {
                "flow_run_id": self.flow_run_id,
                "resume_key": self.resume_key,
                "opened_at": dt.datetime.now(dt.UTC).isoformat(),
            },
        )

    def _take_over_killed_runs(self) -> None:
        """Step 2: move the parts of killed runs with this run's ``resume_key`` (made on this
        host, newest first, never over a part this folder has) into this run's folder, then
        retire theirs. Each move is a rename, so every image stays visible exactly once."""
        candidates = []
        for entry in self._run.folder.glob("*.parquet"):
            other = _Run(self._run.folder, entry.name.removesuffix(".parquet"))
            parts = other.linked()
            if entry.name[0] in "._" or parts is None or other.run_id == self.flow_run_id:
                continue
            run_id, key, opened_at = _manifest(parts)
            if key == self.resume_key and _made_here(parts) and not (parts / _SEAL).exists():
                candidates.append((opened_at, other, parts, run_id or other.run_id))
        for _, other, parts, run_id in sorted(candidates, key=lambda c: c[0], reverse=True):
            fd = _lock(other.lock, create=True)
            if fd is None:  # a live run
                continue
            try:
                if other.linked() != parts:  # another run took it over first
                    continue
                for part in _parts_in(parts):
                    if not (self.parts / part.name).exists():
                        os.replace(part, self.parts / part.name)
                os.unlink(other.entry)
                other.retire(parts)
                self.resumed.append(run_id)
            finally:
                _unlink(other.lock)
                os.close(fd)

    def write_image(self, image_id: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write (or atomically replace) one image's rows as its part; return the part.

        Raises:
            StorageError: the part could not be written (names it and the fix); the parts of
                earlier images stay readable.
        """
        if self._lock_fd is None:
            self.open()
        table = _table(rows)
        part = self.parts / part_name(image_id)
        with _naming(part):
            _write_atomic(table, part)
        return part

    def compact(self) -> Path:
        """Seal, stage, publish and retire (steps 4 to 7): the rows of every part become the
        run's one file; release the lock. Return the file.

        Raises:
            StorageError: a step failed (names the file and the fix); the rows stay readable
                as parts, and the next run or ``segstyle results`` finishes the file.
        """
        if self._lock_fd is None:
            self.open()
        seal = self.parts / _SEAL
        with _naming(seal):
            os.close(os.open(seal, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        with _naming(self.final):
            self._run.finish(self.parts)
        self.close()
        return self.final


# ----------------------------------------------------------------------------- reading


def _result_files(root: Path, skipped: list[str]) -> list[tuple[Path, str | None]]:
    """The files ``pandas.read_parquet(root)`` reads, with the ``flow`` of their hive folder.
    Names that start with ``.`` or ``_`` are left out, as pyarrow does; links are followed
    only to places inside ``root``. A link elsewhere, a link loop or an unreadable subfolder
    adds a line to ``skipped``.

    Raises:
        FileNotFoundError: a folder vanished while being listed: list again.
    """
    if not root.is_dir():
        return [(root, None)]
    inside = Path(os.path.realpath(root))
    found: list[tuple[Path, str | None]] = []
    seen: set[str] = set()
    stack: list[tuple[Path, str | None]] = [(root, None)]
    while stack:
        folder, flow = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            if folder == root or isinstance(exc, FileNotFoundError):
                raise
            skipped.append(os_error_message(exc, folder))
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.name[0] in "._":
                    continue
                if entry.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(inside):
                    skipped.append(f"{path}: a link out of {root}; remove it")
                elif entry.is_dir():
                    key, equals, value = entry.name.partition("=")
                    named = urllib.parse.unquote(value) if equals and key == "flow" else flow
                    stack.append((path, named))
                elif entry.is_file():
                    found.append((path, flow))
            except OSError as exc:  # a link loop
                skipped.append(os_error_message(exc, path))
    return sorted(found, key=lambda item: str(item[0]))


def read_metrics(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one run file or a whole metrics directory into a DataFrame.

    First finishes or removes what killed runs left (:func:`finish_ended_runs`). Files of every
    schema version are read against the current :data:`SCHEMA` (columns a file lacks come back
    empty), plus the hive partition column ``flow``. A file that is not readable Parquet
    (corrupt, truncated, empty) or not segstyle's results (another schema), and a link out of
    the folder, are skipped with one warning line each (``skipped: <path>: <what>; <fix>``).
    Plain ``pandas.read_parquet(dir)`` reads the same rows, but takes its columns from the first
    file it finds and stops at a bad file. Parts of running or killed runs are read like files
    (see :func:`partial_runs`).

    Raises:
        InputError: nothing there yet.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no Parquet results here yet; run `segstyle run` first")
    if path.is_dir():
        finish_ended_runs(path)
    for attempt in range(5):
        tables: list[pa.Table] = []
        skipped: list[str] = []
        try:
            by_flow: dict[str | None, list[Path]] = {}
            for file, flow in _result_files(path, skipped):
                by_flow.setdefault(flow, []).append(file)
            usable = {flow: _usable(files, path, skipped) for flow, files in by_flow.items()}
            for flow, files in usable.items():
                table = _read_files(files, path, skipped)
                flows = pa.array([flow] * len(table), pa.string())
                tables.append(table.append_column("flow", flows))
            break
        except FileNotFoundError:  # a run published or retired its parts meanwhile
            if attempt == 4:
                raise
            time.sleep(0.05)
    for line in skipped:
        _log.warning("skipped: %s", _printable(line))
    if not any(usable.values()):
        raise InputError(f"{path}: no Parquet results here yet; run `segstyle run` first")
    return pa.concat_tables(tables).to_pandas()


@dataclass(frozen=True)
class PartialRun:
    """A flow run whose rows are still parts: it is running, or it was killed."""

    flow: str
    flow_run_id: str
    parts: Path  # ``<flow_run_id>.parquet``, the link to its parts folder
    images: int
    writing: bool  # a live process holds the run's lock (a run of another host: assumed)


def partial_runs(metrics_dir: str | os.PathLike[str]) -> list[PartialRun]:
    """The runs under ``metrics_dir`` whose rows are parts (unsealed), not a file yet."""
    runs = []
    for entry in sorted(Path(metrics_dir).glob("flow=*/*.parquet")):
        run = _Run(entry.parent, entry.name.removesuffix(".parquet"))
        parts = run.linked()
        if entry.name[0] in "._" or parts is None or (parts / _SEAL).exists():
            continue
        with contextlib.suppress(FileNotFoundError):  # it finished meanwhile
            runs.append(
                PartialRun(
                    flow=entry.parent.name.removeprefix("flow="),
                    flow_run_id=run.run_id,
                    parts=entry,
                    images=len(_parts_in(parts)),
                    writing=not _made_here(parts) or _held(run.lock),
                )
            )
    return runs


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per segmenter/stylizer/class summary: rows, images, failures, mean scores, seconds.

    Scores are means over prompt rows (``image_iou`` over images); seconds are means over
    images, since every prompt row of an image repeats that image's stage times.
    """
    keys = ["segmenter", "stylizer", "classes"]
    rows = frame.assign(failed=frame["status"].eq("failed"))
    scores = rows.groupby(keys, dropna=False).agg(
        rows=("image_id", "size"),
        images=("image_id", "nunique"),
        failed=("failed", "sum"),
        mean_iou=("iou", "mean"),
        mean_dice=("dice", "mean"),
        mean_iou_instance=("iou_instance", "mean"),
    )
    per_image = (
        rows.drop_duplicates(["flow_run_id", "image_id"])
        .groupby(keys, dropna=False)
        .agg(
            mean_image_iou=("image_iou", "mean"),
            seconds_segment=("seconds_segment", "mean"),
            seconds_stylize=("seconds_stylize", "mean"),
        )
    )
    return scores.join(per_image).reset_index()


def select_run(frame: pd.DataFrame, run: str | None = None) -> tuple[str, pd.DataFrame]:
    """The rows of one run of ``frame`` (:func:`read_metrics`' table) and its key (the flow run
    id; files of old versions may only have the run's name): ``run``, a run name or flow run
    id, else the run started last. A name that several runs share picks the latest of them.

    Raises:
        SegstyleError: ``frame`` is empty, or no run is called ``run`` (the message lists the
            latest five).
    """
    if frame.empty:
        raise SegstyleError("the results hold no rows; run `segstyle run` first")
    key = frame["flow_run_id"].fillna(frame["run_id"]).fillna("(unnamed)").astype(str)
    order = list(
        key.loc[
            frame.sort_values("started_at", na_position="first", kind="stable").index
        ].drop_duplicates(keep="last")
    )
    chosen = frame if run is None else frame[(frame["run_id"] == run) | (key == run)]
    if chosen.empty:
        names = frame.assign(_key=key).drop_duplicates("_key").set_index("_key")["run_id"]
        latest = ", ".join(f"{names[k]} ({k})" for k in order[-5:])
        raise SegstyleError(f"no run named {run!r}; latest runs: {latest}")
    picked = next(k for k in reversed(order) if k in set(key[chosen.index]))
    return picked, frame[key == picked]


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """Each result once: the row of the latest run per configuration, image and prompt
    (``config_sha256``, ``image_id``, ``prompt_index``), so that nightly runs over unchanged
    data never count an image twice. ``pd.read_parquet(metrics).pipe(latest)`` gives the same
    answer after one run as after four identical ones.
    """
    keys = ["config_sha256", "image_id", "prompt_index"]
    ordered = frame.sort_values("started_at", na_position="first", kind="stable")
    return ordered.drop_duplicates(keys, keep="last").sort_index()
