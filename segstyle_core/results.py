"""The per-image results table: its Parquet schema, durable per-image parts, one file per run.

Layout under ``<metrics_dir>/flow=<flow name>/``:

- ``<flow_run_id>.parquet``: a finished flow run's rows, one file (see :func:`run_file`).
- ``<flow_run_id>.parts/<image_id>.parquet``: while a run is going, each image's rows land
  here atomically as soon as that image finishes (see :class:`RunRows`), so a crash, a SIGKILL
  or a full disk loses at most the images still in flight. The folder also holds ``_lock``
  (held by the writing process) and ``_run.json``; names starting with ``_`` or ``.`` are
  skipped by pyarrow's dataset discovery, and so are the hidden temporary files.

``pandas.read_parquet(metrics_dir)`` reads every finished image of every run, running,
killed or complete, each exactly once (the hive partition adds a ``flow`` column; a folder
name without ``=``, like ``<id>.parts``, adds none). At the end of a run :meth:`RunRows.compact`
writes the one file and removes the parts, ordered so that a reader never sees an image both
as a part and in the run's file: the parts folder is first renamed to a hidden name, then the
file is renamed into place. A reader listing the folder during those two renames may miss that
run's rows (or, having listed the parts, find one gone: :func:`read_metrics` lists again).

A retried flow run (same flow run id) starts from its own rows: the run's file, if any, is
split back into parts, and each image it redoes replaces its part. A rerun with the same
configuration (same ``config_sha256``) takes over the parts of a run of the same flow that was
killed (no live process holds its ``_lock``), so its rows stay visible once, under the rerun.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
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

from segstyle_core.errors import InputError, StorageError, storage_error
from segstyle_core.fileio import atomic_write_with, write_json_atomic

try:  # POSIX: a run's lock is released by the OS when its process dies, even on SIGKILL
    import fcntl
except ImportError:  # pragma: no cover - Windows: no takeover of killed runs' parts
    fcntl = None  # type: ignore[assignment]

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode of the files written through a temporary file (mkstemp makes them 0600).
_FILE_MODE = 0o666 & ~_umask()

#: Suffix of a running (or killed) flow run's folder of per-image parts.
PARTS_SUFFIX = ".parts"
_LOCK = "_lock"
_MANIFEST = "_run.json"


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
    """The one Parquet file that belongs to a (finished) flow run."""
    return Path(metrics_dir) / f"flow={flow_name}" / f"{flow_run_id}.parquet"


def parts_dir(metrics_dir: str | os.PathLike[str], flow_name: str, flow_run_id: str) -> Path:
    """The folder of per-image parts of a flow run that is running or was killed."""
    return Path(metrics_dir) / f"flow={flow_name}" / f"{flow_run_id}{PARTS_SUFFIX}"


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


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _read_files(files: Sequence[Path]) -> pa.Table:
    """Rows of Parquet files as one table of :data:`SCHEMA` (older versions: empty columns)."""
    if not files:
        return SCHEMA.empty_table()
    return ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet").to_table()


def _publish(table: pa.Table, final: Path, parts: Path) -> Path:
    """Make ``table`` the run's file ``final`` and retire the run's ``parts`` folder.

    Order, so that no reader sees an image twice: write the file under a hidden name; rename
    the parts folder to a hidden name (its rows vanish); rename the file into place (the rows
    appear); remove the hidden folder. :meth:`RunRows._recover` finishes or undoes each step
    after a crash.
    """
    folder = final.parent
    hidden = folder / f".{parts.name}"
    with _naming(final):
        folder.mkdir(parents=True, exist_ok=True)
        fd, staged_name = tempfile.mkstemp(
            prefix=f".{final.stem}.compacted-", suffix=".parquet", dir=folder
        )
        os.close(fd)
        staged = Path(staged_name)
        try:
            write_parquet(table, staged)
            os.chmod(staged, _FILE_MODE)
            if parts.exists():
                _rmtree(hidden)
                os.replace(parts, hidden)
            os.replace(staged, final)
        except BaseException:
            _unlink(staged)
            raise
    _rmtree(hidden)
    return final


def write_run(
    rows: Sequence[Mapping[str, Any]],
    metrics_dir: str | os.PathLike[str],
    flow_name: str,
    flow_run_id: str,
) -> Path:
    """Write (or atomically replace) the Parquet file of one flow run; return its path.

    Parts the run left (:class:`RunRows`) are retired in the same step.
    """
    table = _table(rows)
    final = run_file(metrics_dir, flow_name, flow_run_id)
    return _publish(table, final, parts_dir(metrics_dir, flow_name, flow_run_id))


# ----------------------------------------------------------------------------- locks


def _try_lock(path: Path, create: bool) -> int | None:
    """An fd holding an exclusive lock on ``path``; ``None`` when a live process holds it.

    Checks after locking that ``path`` still names the locked file (a folder renamed between
    open and lock is somebody else's business).
    """
    if fcntl is None:
        return None
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not os.path.samestat(os.fstat(fd), os.stat(path)):
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_writing(parts: Path) -> bool:
    """Whether a live process holds the lock of a parts folder (probes with a shared lock)."""
    if fcntl is None:
        return True
    try:
        fd = os.open(parts / _LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _manifest(parts: Path) -> dict[str, Any]:
    try:
        value = json.loads((parts / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------------------- durable rows


class RunRows:
    """The durable rows of one flow run: a part per image as it finishes, one file at the end.

    Use as a context manager around the loop that finishes images::

        with RunRows(metrics, flow_name, flow_run_id, resume_key=config_sha256) as durable:
            for image in images:
                durable.write_image(image_id, rows)
            parquet = durable.compact()

    Opening recovers what a crash of this flow run left half-done, splits the run's file of an
    earlier attempt back into parts, creates and locks ``<flow_run_id>.parts/``, and takes over
    the parts of killed runs of the same flow with the same ``resume_key`` (see the module
    docstring). Every OS error names the file and what to do (:class:`StorageError`).
    """

    def __init__(
        self,
        metrics_dir: str | os.PathLike[str],
        flow_name: str,
        flow_run_id: str,
        resume_key: str | None = None,
    ) -> None:
        self.final = run_file(metrics_dir, flow_name, flow_run_id)
        self.parts = parts_dir(metrics_dir, flow_name, flow_run_id)
        self.flow_run_id = flow_run_id
        self.resume_key = resume_key
        #: image id -> its part, for the images this attempt wrote, in order
        self.written: dict[str, Path] = {}
        #: flow run ids of killed runs whose parts this run took over
        self.resumed: list[str] = []
        self._folder = self.final.parent
        self._lock_fd: int | None = None

    # -- opening --------------------------------------------------------------------------

    def __enter__(self) -> RunRows:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> RunRows:
        """Recover, create and lock the parts folder, take over killed runs' parts."""
        if self._lock_fd is not None:
            return self
        with _naming(self.parts):
            self._folder.mkdir(parents=True, exist_ok=True)
            self._recover()
            for _ in range(3):
                if self.parts.exists():
                    self._lock_fd = _try_lock(self.parts / _LOCK, create=True)
                    if self._lock_fd is None and fcntl is not None:
                        raise StorageError(
                            f"{self.parts}: another process is writing the rows of flow run "
                            f"{self.flow_run_id}; wait for it to finish or stop it, then retry"
                        )
                    if self.final.exists():  # cannot happen after _recover; parts win
                        _unlink(self.final)
                    break
                if self._create():
                    break
            self._write_manifest()
            if self.resume_key is not None:
                self._take_over_killed_runs()
        return self

    def close(self) -> None:
        """Release the lock (the parts stay until :meth:`compact`)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _hidden(self, suffix: str) -> Path:
        return self._folder / f".{self.flow_run_id}{suffix}"

    def _recover(self) -> None:
        """Finish or undo what a crash of this flow run left between two renames."""
        for leftover in self._folder.glob(f".{self.flow_run_id}.parts.new-*"):
            _rmtree(leftover)
        for leftover in self._folder.glob(f".{self.flow_run_id}.compacted-*.parquet"):
            _unlink(leftover)
        hidden_parts = self._hidden(PARTS_SUFFIX)
        if hidden_parts.exists():  # killed during compact()
            if self.final.exists() or self.parts.exists():
                _rmtree(hidden_parts)
            else:
                os.replace(hidden_parts, self.parts)
        replaced = self._hidden(".replaced.parquet")
        if replaced.exists():  # killed while splitting the file of an earlier attempt
            if self.final.exists() or self.parts.exists():
                _unlink(replaced)
            else:
                os.replace(replaced, self.final)

    def _create(self) -> bool:
        """Create the locked parts folder under a hidden name, with the rows of the run's
        file of an earlier attempt as parts, then show it in place of that file."""
        staging = Path(tempfile.mkdtemp(prefix=f".{self.flow_run_id}.parts.new-", dir=self._folder))
        fd = _try_lock(staging / _LOCK, create=True)
        try:
            if self.final.exists():
                table = _read_files([self.final])
                for image_id in pc.unique(table["image_id"]).to_pylist():
                    if image_id:
                        image_rows = table.filter(pc.equal(table["image_id"], image_id))
                        write_parquet(image_rows, staging / part_name(image_id))
                replaced = self._hidden(".replaced.parquet")
                os.replace(self.final, replaced)  # the old rows vanish ...
                os.rename(staging, self.parts)  # ... and reappear as parts
                _unlink(replaced)
            else:
                os.rename(staging, self.parts)
        except OSError:
            if fd is not None:
                os.close(fd)
            _rmtree(staging)
            if self.parts.exists():  # another process created it first: lock that one
                return False
            raise
        self._lock_fd = fd
        return True

    def _write_manifest(self) -> None:
        write_json_atomic(
            self.parts / _MANIFEST,
            {
                "flow_run_id": self.flow_run_id,
                "resume_key": self.resume_key,
                "opened_at": dt.datetime.now(dt.UTC).isoformat(),
            },
        )

    def _take_over_killed_runs(self) -> None:
        """Move the parts of killed runs with this run's ``resume_key`` into this run's
        folder (newest first, never over a part this folder has), then remove their folders.
        Each move is a rename, so every image stays visible exactly once."""
        candidates = [
            p
            for p in self._folder.glob(f"*{PARTS_SUFFIX}")
            if p.is_dir() and p.name[0] not in "._" and p != self.parts
        ]
        candidates.sort(key=lambda p: _manifest(p).get("opened_at", ""), reverse=True)
        for other in candidates:
            if _manifest(other).get("resume_key") != self.resume_key:
                continue
            fd = _try_lock(other / _LOCK, create=False)
            if fd is None:  # a live run, or not a folder RunRows made
                continue
            try:
                for part in other.glob("*.parquet"):
                    if part.name[0] not in "._" and not (self.parts / part.name).exists():
                        os.replace(part, self.parts / part.name)
                self.resumed.append(str(_manifest(other).get("flow_run_id") or other.stem))
                _rmtree(other)
            finally:
                os.close(fd)

    # -- writing --------------------------------------------------------------------------

    def write_image(self, image_id: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write (or atomically replace) one image's rows as its part; return the part.

        Raises:
            StorageError: the part could not be written (names it and the fix); the parts of
                earlier images stay readable.
        """
        if self._lock_fd is None and fcntl is not None:
            self.open()
        table = _table(rows)
        part = self.parts / part_name(image_id)
        with _naming(part):
            atomic_write_with(part, lambda tmp: write_parquet(table, tmp))
        self.written.pop(image_id, None)
        self.written[image_id] = part
        return part

    def compact(self) -> Path:
        """Write the rows of the images this attempt wrote as the run's one file, remove the
        parts folder (with any part this attempt did not rewrite) and release the lock.

        Raises:
            StorageError: the file could not be written (names it and the fix); the parts stay.
        """
        with _naming(self.final):
            table = _read_files(list(self.written.values()))
        path = _publish(table, self.final, self.parts)
        self.close()
        return path


# ----------------------------------------------------------------------------- reading


def _discover(path: Path) -> ds.Dataset:
    schema = SCHEMA.append(pa.field("flow", pa.string()))
    return ds.dataset(path, schema=schema, format="parquet", partitioning="hive")


def read_metrics(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one run file or a whole metrics directory into a DataFrame.

    Files of every schema version are read against the current :data:`SCHEMA` (columns a file
    lacks come back empty), plus the hive partition column ``flow``. Plain
    ``pandas.read_parquet(dir)`` works too but takes its columns from the first file it finds.
    Parts of running or killed runs are read like files (see :func:`partial_runs`).

    Raises:
        InputError: nothing there yet.
    """
    path = Path(path)
    for attempt in range(3):
        try:
            dataset = _discover(path) if path.exists() else None
            if dataset is None or not dataset.files:
                raise InputError(f"{path}: no Parquet results here yet; run `segstyle run` first")
            return dataset.to_table().to_pandas()
        except FileNotFoundError:  # a run compacted its parts between listing and reading
            if attempt == 2:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class PartialRun:
    """A flow run whose rows are still parts: it is running, or it was killed."""

    flow: str
    flow_run_id: str
    parts: Path
    images: int
    writing: bool  # a live process holds the run's lock


def partial_runs(metrics_dir: str | os.PathLike[str]) -> list[PartialRun]:
    """The runs under ``metrics_dir`` that have parts but no file yet."""
    runs = []
    for parts in sorted(Path(metrics_dir).glob(f"flow=*/*{PARTS_SUFFIX}")):
        if not parts.is_dir() or parts.name[0] in "._":
            continue
        runs.append(
            PartialRun(
                flow=parts.parent.name.removeprefix("flow="),
                flow_run_id=parts.name.removesuffix(PARTS_SUFFIX),
                parts=parts,
                images=sum(1 for p in parts.glob("*.parquet") if p.name[0] not in "._"),
                writing=_is_writing(parts),
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
