"""The per-image results table: its Parquet schema, durable per-image parts, one file per run.

Under ``<metrics_dir>/flow=<flow name>/`` a flow run ``<id>`` has ``<id>.parquet`` (its rows;
until it finishes, a link to its parts folder), ``.<id>.lock`` (``flock``-ed by the writer),
``.<id>.trash-<random>/`` (a retired folder) and ``.<id>.parts-<host>-<random>/`` (``<host>``:
8 hex digits of the host name's SHA-256): one :func:`part_name` file per finished image,
``_run.json`` (id, ``resume_key``, start), then ``_sealed`` and ``_compacted.parquet``.
pyarrow skips names starting with ``.`` or ``_``, so ``pandas.read_parquet(metrics_dir)`` reads
each finished image of every run exactly once (plus a ``flow`` column).

The protocol, one atomic step at a time (a kill after any step loses and doubles nothing):
1. *open*: lock; make a parts folder (a finished run's file is first split into parts), link
   to it and ``os.replace`` the link onto ``<id>.parquet``; a killed attempt's retry reuses it.
2. *take over* (with a ``resume_key``): for each killed run of this flow and host with the
   same key, move the parts this run lacks into its folder, unlink its link, retire its folder.
3. *write an image*: a temporary renamed onto the part. 4. *seal*: create ``_sealed``.
5. *stage*: every part's rows (oldest first) to ``_compacted.parquet``. 6. *publish*:
   ``os.replace`` it onto ``<id>.parquet``. 7. *retire*: rename the parts folder to trash and
   remove it; remove the lock.

Recovery (:func:`finish_ended_runs`, when a :class:`RunRows` opens and before
:func:`read_metrics`): a sealed folder is finished (steps 5-7, by any process) or retired when
no link names it; trash is removed. An unsealed folder is touched only when made on this host
and its lock can be taken: its temporary files are removed, and it is retired if no link names
it (with the link if it holds no part). Earlier versions' ``.<id>.parts/`` and
``.<id>.compacted-*.parquet`` are finished into ``<id>.parquet``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
from segstyle_core.fileio import FILE_MODE, HOST_TAG, atomic_write_with, write_json_atomic

_log = logging.getLogger(__name__)


#: 2: ``image_iou``/``image_dice``. 3: ``mask_rle``, ``cached_<stage>``. Older files read empty.
SCHEMA_VERSION = 3

#: Stages with ``seconds_<stage>`` and ``cached_<stage>`` columns.
TIMED_STAGES = ("gt", "segment", "stylize", "composite", "figures")

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
        *[(name, pa.float64()) for name in ("mask_score", "iou", "dice", "precision", "recall")],
        *[(f"{name}_instance", pa.float64()) for name in ("iou", "dice", "precision", "recall")],
        ("image_iou", pa.float64()),  # union of the image's masks vs the class GT
        ("image_dice", pa.float64()),
        *[(f"{name}_area", pa.int64()) for name in ("pred", "gt", "instance")],
        # seconds spent on each stage in this run (a cache hit: the lookup; stylize: all the
        # image's styles) and whether the stage's result came from the run folder's cache
        *[(f"seconds_{stage}", pa.float64()) for stage in TIMED_STAGES],
        *[(f"cached_{stage}", pa.bool_()) for stage in TIMED_STAGES],
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


_MANIFEST = "_run.json"
_SEAL = "_sealed"
_STAGED = "_compacted.parquet"
_LINK = "_link"
#: The hidden names of the layout (module docstring); ``lastgroup`` tells which one.
_HIDDEN = re.compile(
    r"\.(?P<run>.+)\.(?:parts-(?P<host>[0-9a-f]{8})-[^.]+|(?P<trash>trash)-[^.]+|(?P<lock>lock)"
    r"|(?P<legacy>parts)|(?P<compacted>compacted)-[^.]+\.parquet)"
)
#: The ``flow=<flow name>`` folders of a metrics folder, as ``pandas.read_parquet`` reads them.
_FLOWS = ds.partitioning(pa.schema([("flow", pa.string())]), flavor="hive")
#: errnos of a file or folder another process finished and removed first
_GONE = (errno.ENOENT, errno.ENOTDIR)


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Fill missing columns with nulls and reject unknown ones (a typo must not vanish)."""
    if unknown := set(row) - set(COLUMNS):
        raise ValueError(f"unknown result columns {sorted(unknown)}; add them to results.SCHEMA")
    return {name: row.get(name) for name in COLUMNS} | {"schema_version": SCHEMA_VERSION}


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` (the one place results touch the Parquet writer)."""
    pq.write_table(table, path)


def run_file(metrics_dir: str | os.PathLike[str], flow_name: str, flow_run_id: str) -> Path:
    """``<metrics_dir>/flow=<flow_name>/<flow_run_id>.parquet``: the run's rows."""
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
    atomic_write_with(path, lambda tmp: write_parquet(table, tmp))


def _printable(line: str) -> str:
    """``line`` with control characters and undecodable file-name bytes escaped."""
    text = line.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _skip(file: Path, folder: Path, exc: BaseException, skipped: list[str]) -> None:
    """Add a line naming the unreadable ``file`` and the fix to ``skipped``; raise
    FileNotFoundError when it is gone (a run published its parts: list the folder again)."""
    if not file.is_file():
        raise FileNotFoundError(errno.ENOENT, "vanished while reading", str(file)) from exc
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    skipped.append(
        f"{file}: not a readable Parquet file ({first}); delete it or move it out of {folder}"
    )


def _usable(files: Sequence[Path], folder: Path, skipped: list[str]) -> list[Path]:
    """``files`` that are segstyle results; each other one adds a line to ``skipped``."""
    usable = []
    for file in files:
        try:
            schema = pq.read_schema(file)
        except (pa.ArrowException, OSError) as exc:
            _skip(file, folder, exc, skipped)
            continue
        names = schema.names
        with contextlib.suppress(pa.ArrowException):
            if {"schema_version", "image_id"} <= set(names) <= set(COLUMNS):
                schema.empty_table().cast(pa.schema([SCHEMA.field(name) for name in names]))
                usable.append(file)
                continue
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        skipped.append(
            f"{file}: not a segstyle results file (columns {shown}); move it out of {folder}"
        )
    return usable


def _read_files(
    usable: Sequence[Path], folder: Path, skipped: list[str], flows_under: Path | None = None
) -> pa.Table:
    """The rows of :func:`_usable` files as one table of :data:`SCHEMA`, in the files' order,
    plus (with ``flows_under``) the ``flow`` of each file's hive folder below that one; a file
    whose data fails to read (behind a good footer) is skipped."""
    hive = flows_under is not None
    schema = SCHEMA.append(pa.field("flow", pa.string())) if hive else SCHEMA
    options = {"partitioning": _FLOWS, "partition_base_dir": str(flows_under)} if hive else {}

    def read(files: Sequence[Path]) -> pa.Table:
        return ds.dataset([str(file) for file in files], schema, "parquet", **options).to_table()

    with contextlib.suppress(pa.ArrowException, OSError):
        return read(usable)
    tables = [schema.empty_table()]
    for file in usable:
        try:
            tables.append(read([file]))
        except (pa.ArrowException, OSError) as exc:
            _skip(file, folder, exc, skipped)
    return pa.concat_tables(tables)


def _parts_in(parts: Path) -> list[Path]:
    """The parts (regular files, not hidden) in ``parts``, oldest first, then by name."""
    found = [
        (entry.stat(follow_symlinks=False).st_mtime_ns, Path(entry.path))
        for entry in os.scandir(parts)
        if entry.name[0] not in "._" and entry.is_file(follow_symlinks=False)
    ]
    return [path for _, path in sorted(found)]


def _read_parts(parts: Path) -> pa.Table:
    """The rows of a parts folder, oldest part first; an unusable part is a warning line."""
    skipped: list[str] = []
    table = _read_files(_usable(_parts_in(parts), parts, skipped), parts, skipped)
    for line in skipped:
        _log.warning("skipped: %s", _printable(line))
    return table


def _lock(path: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path`` (created); ``None`` when a live process
    holds it."""
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
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
    match = _HIDDEN.fullmatch(parts.name)
    return match is not None and match["host"] == HOST_TAG


def _manifest(parts: Path) -> dict[str, Any]:
    """A parts folder's ``_run.json``; empty when it is unreadable."""
    try:
        value = json.loads((parts / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class _Run:
    """The files of one flow run in its flow folder."""

    folder: Path
    run_id: str

    @property
    def entry(self) -> Path:
        return self.folder / f"{self.run_id}.parquet"

    @property
    def lock(self) -> Path:
        return self.folder / f".{self.run_id}.lock"

    def linked(self) -> Path | None:
        """The parts folder ``<id>.parquet`` links to; ``None`` for anything else."""
        try:
            target = os.readlink(self.entry)
        except OSError:
            return None
        match = _HIDDEN.fullmatch(target)
        if match is None or match.lastgroup != "host" or match["run"] != self.run_id:
            return None
        return self.folder / target

    def show(self, parts: Path) -> None:
        """Put a link to ``parts`` in place of ``<id>.parquet``, in one step."""
        link = parts / _LINK
        link.unlink(missing_ok=True)
        os.symlink(parts.name, link)
        os.replace(link, self.entry)

    def finish(self, parts: Path) -> None:
        """Steps 5 to 7 for the sealed ``parts``, from wherever they stopped; a StorageError
        leaves them for any later run or reader to finish."""
        try:
            with _naming(self.entry):
                if self.linked() == parts:
                    staged = parts / _STAGED
                    if not staged.exists():
                        _write_atomic(_read_parts(parts), staged)
                    os.replace(staged, self.entry)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
        self.retire(parts)

    def retire(self, parts: Path) -> None:
        """Rename ``parts`` to a trash name (one step), then remove it."""
        trash = self.folder / f".{self.run_id}.trash-{secrets.token_hex(6)}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(parts, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def recover(self, leftovers: Sequence[tuple[Path, str | None]]) -> None:
        """Recovery for this run's hidden ``leftovers``: ``(path, :data:`_HIDDEN` lastgroup)``."""
        unsealed = []
        for path, kind in leftovers:
            if kind == "host" and (path / _SEAL).exists():
                self.finish(path)  # retires it when no link names it
            elif kind == "host":
                unsealed.append(path)
            elif kind == "trash":
                shutil.rmtree(path, ignore_errors=True)
            elif kind == "compacted":
                path.unlink(missing_ok=True)
        if not all(map(_made_here, unsealed)):  # another host's run: its lock is not ours
            return
        fd = None if _held(self.lock) else _lock(self.lock)
        if fd is None:  # the run is live
            return
        try:
            linked = self.linked()
            for path in unsealed:
                if path == linked and _parts_in(path):  # a killed run's rows: keep them
                    for leftover in path.iterdir():
                        if leftover.name[0] == "." or leftover.name == _LINK:
                            leftover.unlink(missing_ok=True)
                    continue
                if path == linked:  # a killed run without rows
                    self.entry.unlink(missing_ok=True)
                self.retire(path)
            for path in (path for path, kind in leftovers if kind == "legacy"):
                if not os.path.lexists(self.entry):
                    _write_atomic(_read_parts(path), self.entry)
                shutil.rmtree(path, ignore_errors=True)
        finally:
            self.lock.unlink(missing_ok=True)
            os.close(fd)


def finish_ended_runs(metrics_dir: str | os.PathLike[str]) -> None:
    """The recovery in every ``flow=*`` folder of ``metrics_dir`` (or in ``metrics_dir`` itself
    when it is one); a run that cannot be fixed is a warning line."""
    root = Path(metrics_dir)
    folders = [root] if root.name.startswith("flow=") else sorted(root.glob("flow=*"))
    for folder in folders:
        found: defaultdict[str, list[tuple[Path, str | None]]] = defaultdict(list)
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if (match := _HIDDEN.fullmatch(entry.name)) and not entry.is_symlink():
                        found[match["run"]].append((Path(entry.path), match.lastgroup))
        except OSError:  # not a folder, or gone
            continue
        for run_id, leftovers in sorted(found.items()):
            try:
                _Run(folder, run_id).recover(leftovers)
            except OSError as exc:
                line = f"could not finish the rows of flow run {run_id}: {os_error_message(exc)}"
                _log.warning("%s", _printable(line))


def _unsealed(entries: Iterable[Path]) -> Iterator[tuple[_Run, Path]]:
    """The runs of the ``<id>.parquet`` ``entries`` that link to an unsealed parts folder."""
    for entry in entries:
        run = _Run(entry.parent, entry.name.removesuffix(".parquet"))
        parts = run.linked()
        if entry.name[0] not in "._" and parts is not None and not (parts / _SEAL).exists():
            yield run, parts


class RunRows:
    """The durable rows of one flow run: a part per image as it finishes (:meth:`write_image`),
    one file at the end (:meth:`compact`). A context manager; opening does steps 1 and 2 of the
    module docstring. Every OS error is a :class:`StorageError` naming the file and the fix."""

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
        self.parts: Path  # this attempt's parts folder (set by :meth:`open`)
        self.resumed: list[str] = []  # flow run ids of killed runs whose parts it took over
        self._run = _Run(self.final.parent, flow_run_id)
        self._lock_fd: int | None = None

    def __enter__(self) -> RunRows:
        return self.open()

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
            self._lock_fd = _lock(self._run.lock)
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
            self._run.lock.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _attach(self) -> Path:
        """This attempt's parts folder, linked in place of ``<id>.parquet`` (step 1)."""
        linked = self._run.linked()
        if linked is not None and not (linked / _SEAL).exists():  # a killed attempt's: go on
            self._write_manifest(linked)
            return linked
        if linked is not None:  # sealed: the recovery failed just now
            self._run.finish(linked)
        if os.path.lexists(self.final) and (self.final.is_symlink() or not self.final.is_file()):
            raise StorageError(
                f"{self.final}: not a results file of segstyle; move it out of the metrics "
                "folder and rerun"
            )
        folder = self._run.folder
        parts = Path(tempfile.mkdtemp(prefix=f".{self.flow_run_id}.parts-{HOST_TAG}-", dir=folder))
        self._write_manifest(parts)
        if self.final.exists():  # a finished attempt: its rows become parts
            skipped: list[str] = []
            table = _read_files(_usable([self.final], folder, skipped), folder, skipped)
            if skipped:
                raise InputError(skipped[0])
            for image_id in filter(None, pc.unique(table["image_id"]).to_pylist()):
                image_rows = table.filter(pc.equal(table["image_id"], image_id))
                write_parquet(image_rows, parts / part_name(image_id))
        self._run.show(parts)
        return parts

    def _write_manifest(self, parts: Path) -> None:
        opened_at = dt.datetime.now(dt.UTC).isoformat()
        manifest = {"flow_run_id": self.flow_run_id, "resume_key": self.resume_key}
        write_json_atomic(parts / _MANIFEST, {**manifest, "opened_at": opened_at})

    def _take_over_killed_runs(self) -> None:
        """Step 2, newest killed run first, never over a part this folder has."""
        candidates = []
        for other, parts in _unsealed(self._run.folder.glob("*.parquet")):
            found = _manifest(parts)
            same_key = found.get("resume_key") == self.resume_key
            if other.run_id != self.flow_run_id and same_key and _made_here(parts):
                candidates.append((str(found.get("opened_at", "")), other, parts))
        for _, other, parts in sorted(candidates, key=lambda c: c[0], reverse=True):
            fd = _lock(other.lock)
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
                self.resumed.append(other.run_id)
            finally:
                other.lock.unlink(missing_ok=True)
                os.close(fd)

    def write_image(self, image_id: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write (or atomically replace) one image's rows as its part; return the part."""
        self.open()
        table = pa.Table.from_pylist([normalise_row(r) for r in rows], schema=SCHEMA)
        part = self.parts / part_name(image_id)
        with _naming(part):
            _write_atomic(table, part)
        return part

    def compact(self) -> Path:
        """Steps 4 to 7: the rows of every part become the run's one file (returned); unlock.
        After a StorageError the rows stay readable as parts; the next run or reader finishes."""
        self.open()
        seal = self.parts / _SEAL
        with _naming(seal):
            os.close(os.open(seal, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        with _naming(self.final):
            self._run.finish(self.parts)
        self.close()
        return self.final


def _result_files(root: Path, skipped: list[str]) -> list[Path]:
    """The files ``pandas.read_parquet(root)`` reads; a link out of ``root``, a link loop or an
    unreadable subfolder adds a line to ``skipped``. FileNotFoundError: a folder vanished."""
    if not root.is_dir():
        return [root]
    inside = Path(os.path.realpath(root))
    found: list[Path] = []
    seen: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        if (real := os.path.realpath(folder)) in seen:
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
                    stack.append(path)
                elif entry.is_file():
                    found.append(path)
            except OSError as exc:  # a link loop
                skipped.append(os_error_message(exc, path))
    return sorted(found, key=str)


#: The fix for a path that holds no results.
_GIVE_RESULTS = (
    "give a run file (<out>/metrics/flow=<flow>/<run>.parquet) or the metrics folder "
    "(<out>/metrics)"
)


def read_metrics(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one run file or a whole metrics directory (after :func:`finish_ended_runs`) into a
    DataFrame of :data:`SCHEMA` (missing columns empty) plus the hive column ``flow``; parts
    of running or killed runs too. Unreadable or foreign files and links out of the folder are
    skipped with a warning line each (``skipped: <path>: <what>; <fix>``). InputError: no
    results there yet; a file that is not one, or a folder with files but no ``flow=*`` ones
    (another folder given), in one line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no Parquet results here yet; run `segstyle run` first")
    if not (path.is_dir() or path.is_file()):  # a FIFO or a device would block the read
        raise InputError(f"{path}: not a regular file or folder; {_GIVE_RESULTS}")
    if path.is_dir():
        finish_ended_runs(path)
    for attempt in range(5):
        skipped: list[str] = []
        try:
            files = _result_files(path, skipped)
            usable = _usable(files, path, skipped)
            table = _read_files(usable, path, skipped, flows_under=path)
            break
        except FileNotFoundError:  # a run published or retired its parts meanwhile
            if attempt == 4:
                raise
            time.sleep(0.05)
    if not usable and not path.is_dir() and skipped:  # its fix: give another path
        raise InputError(f"{_printable(skipped[0].rsplit('; ', 1)[0])}; {_GIVE_RESULTS}")
    if not usable and files and not any(f.parent.name.startswith("flow=") for f in files):
        # not a metrics folder: one line, not one per foreign file
        others = f"{len(files)} other file{'s' * (len(files) > 1)}, the first {files[0]}"
        raise InputError(
            f"{path}: no segstyle results here ({_printable(others)}); give the metrics folder "
            "that `segstyle run` writes (<out>/metrics), or run it first"
        )
    for line in skipped:
        _log.warning("skipped: %s", _printable(line))
    if not usable:
        raise InputError(f"{path}: no Parquet results here yet; run `segstyle run` first")
    return table.to_pandas()


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
    for run, parts in _unsealed(sorted(Path(metrics_dir).glob("flow=*/*.parquet"))):
        with contextlib.suppress(FileNotFoundError):  # it finished meanwhile
            images = len(_parts_in(parts))
            writing = not _made_here(parts) or _held(run.lock)
            flow = run.folder.name.removeprefix("flow=")
            runs.append(PartialRun(flow, run.run_id, run.entry, images, writing))
    return runs


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per segmenter/stylizer/class: rows, images, failures, mean scores (over prompt rows;
    ``image_iou`` over images) and mean seconds per image."""
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
    per_image = rows.drop_duplicates(["flow_run_id", "image_id"]).groupby(keys, dropna=False)
    means = per_image[["image_iou", "seconds_segment", "seconds_stylize"]].mean()
    return scores.join(means.rename(columns={"image_iou": "mean_image_iou"})).reset_index()


def select_run(frame: pd.DataFrame, run: str | None = None) -> tuple[str, pd.DataFrame]:
    """The rows of one run of ``frame`` and its key (the flow run id, else the run name of old
    files): ``run`` (a name or flow run id; the latest of several) or the run started last.
    SegstyleError: ``frame`` is empty, or no run is ``run`` (naming the latest five)."""
    if frame.empty:
        raise SegstyleError("the results hold no rows; run `segstyle run` first")
    key = frame["flow_run_id"].fillna(frame["run_id"]).fillna("(unnamed)").astype(str)
    started = frame.sort_values("started_at", na_position="first", kind="stable")
    order = list(key[started.index].drop_duplicates(keep="last"))
    chosen = frame if run is None else frame[(frame["run_id"] == run) | (key == run)]
    if chosen.empty:
        names = frame.assign(_key=key).drop_duplicates("_key").set_index("_key")["run_id"]
        latest = ", ".join(f"{names[k]} ({k})" for k in order[-5:])
        raise SegstyleError(f"no run named {run!r}; latest runs: {latest}")
    picked = next(k for k in reversed(order) if k in set(key[chosen.index]))
    return picked, frame[key == picked]


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """Each result once: the latest run's row per config_sha256, image_id and prompt_index."""
    keys = ["config_sha256", "image_id", "prompt_index"]
    ordered = frame.sort_values("started_at", na_position="first", kind="stable")
    return ordered.drop_duplicates(keys, keep="last").sort_index()
