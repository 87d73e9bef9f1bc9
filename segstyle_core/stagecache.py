"""Content-addressed, verified stage results on disk, and the :class:`Stage` that computes one.

A result lives in ``<cache_dir>/<stage>/<key[:2]>/<key>/``: its output files and ``record.json``
(written last, atomically) naming each file relative to ``cache_dir`` with its SHA-256 and size.
The key (:meth:`Stage.key`) is the SHA-256 of the stage name and version, the source of the
modules that compute it, and every argument.

A record is used only when it parses strictly as its stage's record type, names its own key and
holds no per-run facts, the folders down to it are real folders, and every output resolves
inside its folder and is a regular file (or folder of them) of the recorded size and SHA-256.
Otherwise it is a miss, logged in one line naming the rule, and computed again by one process
of a machine at a time (a ``flock`` on ``<key>.lock``); every file is written under a temporary
name naming its writer and renamed into place. Nothing outside ``cache_dir`` is read or
written; an unwritable cache that must be written is a :class:`~segstyle_core.errors.StorageError`.

Machines sharing a cache (one output folder on a network file system) need not share that lock: a
reader uses only a whole verified result; a hidden file goes only when its writer was a gone
process of this host or is :data:`LEFTOVER_AGE_S` old, so another machine's live writer keeps its
files; two machines may compute one result at once (a mismatch is a miss, never an error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import importlib
import inspect
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from io import BufferedReader
from pathlib import Path
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from segstyle_core.backends import BackendConfig
from segstyle_core.errors import StorageError
from segstyle_core.fileio import dead_writer_here, file_sha256, sha256_json, write_json_atomic

SHARED_CODE = ("segstyle_core.images",)

RECORD = "record.json"
#: The largest ``record.json`` read (bytes); a larger one is a cache miss.
RECORD_LIMIT = 64 << 20
#: Age in seconds after which a hidden file in a result's folder is a dead writer's leftover.
LEFTOVER_AGE_S = 600
_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class StageRecord:
    """A stage's output files and the facts later stages need (subclasses add typed fields)."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid", strict=True)

    outputs: dict[str, str]  # name -> file path (relative to the cache folder once stored)
    sha256: dict[str, str] = field(default_factory=dict)  # of a folder: content_sha256
    sizes: dict[str, int] = field(default_factory=dict)  # bytes; of a folder: the sum
    cache_key: str = ""
    cache_root: str = ""  # the cache folder the record was read from or written to
    seconds: float = 0.0  # wall time in this run (a cache hit: the lookup only)
    cached: bool = False

    def path(self, name: str) -> str:
        return str(Path(self.cache_root) / self.outputs[name])


_PER_RUN = ("cache_root", "seconds", "cached")
#: Fields a later stage's key leaves out (it keys the outputs' contents, not where they lie)
_NOT_KEYED = ("outputs", "sha256", "sizes", "cache_key", *_PER_RUN)

R = TypeVar("R", bound=StageRecord)
P = ParamSpec("P")

#: A device's concurrency slot: ``slot(device)`` is held while a heavy stage computes.
DeviceSlot = Callable[[str], AbstractContextManager[Any]]


@functools.cache
def code_sha256(modules: tuple[str, ...]) -> str:
    """SHA-256 of the source of ``modules`` (a package counts with every ``.py`` file in it)."""
    digests: list[str] = []
    for name in sorted(modules):
        origin = Path(inspect.getfile(importlib.import_module(name)))
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        digests.extend(f"{name}:{file.name}:{file_sha256(file)}" for file in files)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def content_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, or of a folder's file names and bytes (recursive)."""
    root = Path(path)
    if not root.is_dir():
        return file_sha256(root)
    files = {str(p.relative_to(root)): file_sha256(p) for p in root.rglob("*") if p.is_file()}
    return sha256_json(files)  # sorted by name


def files_key(value: Any) -> Any:
    """The key of a file input: the content SHA-256 of a path, of each path of a list, or None."""
    if isinstance(value, list | tuple):
        return [files_key(item) for item in value]
    return None if value is None else content_sha256(value)


def key_value(value: Any) -> Any:
    """The JSON form of a stage input in its key: a record by its outputs' SHA-256 and facts, a
    model by its JSON, a dataclass, mapping or sequence by its items (else TypeError)."""
    if isinstance(value, StageRecord):
        kept = [f.name for f in dataclasses.fields(value) if f.name not in _NOT_KEYED]
        contents = {n: value.sha256.get(n) or content_sha256(value.path(n)) for n in value.outputs}
        return {"outputs": contents, **key_value({name: getattr(value, name) for name in kept})}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: key_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): key_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [key_value(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"no cache-key form for a {type(value).__name__}; give the stage a keys entry")


def backend_key(config: BackendConfig, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The key of a model backend: its identity and the ``settings`` that change its output."""
    return {"identity": dataclasses.asdict(config.identity()), "settings": dict(settings)}


def stage_dir(cache_dir: str | os.PathLike[str], stage: str, key: str) -> Path:
    return Path(cache_dir) / stage / key[:2] / key


class _Broken(Exception):
    """A stored record breaks a rule of the module docstring (the message says which)."""


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
#: SHA-256 of the files hashed in this process, by (device, inode, size, mtime, ctime).
_digests: dict[tuple[int, ...], str] = {}


@contextlib.contextmanager
def _open_regular(path: Path, most: int | None) -> Iterator[tuple[BufferedReader, os.stat_result]]:
    """``path`` open for reading and its status when it is a regular file (not a link) of at most
    ``most`` bytes (``None``: any), else :class:`_Broken`."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise _Broken(f"{path} is not a regular file (a link, a folder, a FIFO ...)")
    # O_NOFOLLOW and fstat: a link or FIFO swapped in since the lstat is refused too
    with open(os.open(path, _READ_FLAGS), "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Broken(f"{path} is not a regular file")
        if most is not None and info.st_size > most:
            raise _Broken(f"{path} holds {info.st_size} bytes, more than the {most} recorded")
        yield handle, info


def _file_digest(path: Path, most: int | None) -> tuple[str, int]:
    """SHA-256 and size of the regular file ``path``, hashed once while unchanged."""
    with _open_regular(path, most) as (handle, info):
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if identity not in _digests:
            _digests[identity] = hashlib.file_digest(handle, "sha256").hexdigest()
        return _digests[identity], info.st_size


def _stored_content(path: Path, most: int | None) -> tuple[str, int]:
    """:func:`content_sha256` and size of an output, a regular file or a real folder of them,
    of at most ``most`` bytes; a link or special file in it is :class:`_Broken`."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        return _file_digest(path, most)
    files: dict[str, str] = {}
    total = 0
    for entry in _entries(path):
        if not entry.is_dir(follow_symlinks=False):
            inner = Path(entry.path)
            digest, size = _file_digest(inner, None if most is None else most - total)
            files[str(inner.relative_to(path))] = digest
            total += size
    return sha256_json(files), total


def _entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    """Every entry under ``folder``, not descending through links nor into one removed when
    it was yielded."""
    folders = [folder]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                yield entry
                if entry.is_dir(follow_symlinks=False) and os.path.lexists(entry.path):
                    folders.append(Path(entry.path))


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves to a path inside (not at) ``folder``, a resolved path."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte in the name
        return False
    return resolved != folder and resolved.is_relative_to(folder)


def _folders(cache_dir: Path, directory: Path) -> Iterator[Path]:
    """``<stage>``, ``<stage>/<xx>`` and ``<stage>/<xx>/<key>``."""
    parts = directory.relative_to(cache_dir).parts
    return (cache_dir.joinpath(*parts[: depth + 1]) for depth in range(len(parts)))


def _not_a_folder(path: Path) -> bool:
    return os.path.lexists(path) and not stat.S_ISDIR(os.lstat(path).st_mode)


_parsers: dict[type[Any], TypeAdapter[Any]] = {}


def load_record(cache_dir: Path, directory: Path, record_type: type[R]) -> R | None:
    """The record in ``directory`` when it keeps every rule of the module docstring, else
    ``None`` (a broken one logged in one line)."""
    try:
        return _verified(cache_dir, directory, record_type)
    except _Broken as broken:
        rule = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(broken))
        _log.warning("%s: %s; computing it again", directory / RECORD, rule)
        return None


def _verified(cache_dir: Path, directory: Path, record_type: type[R]) -> R | None:
    """:func:`load_record` raising :class:`_Broken` for a broken record."""
    for folder in _folders(cache_dir, directory):
        if _not_a_folder(folder):
            raise _Broken(f"{folder} is a symbolic link or a file, not a folder of the cache")
    try:
        with _open_regular(directory / RECORD, RECORD_LIMIT) as (handle, _):
            if record_type not in _parsers:
                _parsers[record_type] = TypeAdapter(record_type)
            record: R = _parsers[record_type].validate_json(handle.read(RECORD_LIMIT))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Broken(f"unreadable ({exc.strerror or exc})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        raise _Broken(f"not a valid {record_type.__name__} ({where!r}: {first['msg']})") from exc
    if record.cache_key != directory.name:
        raise _Broken(f"it names the key {record.cache_key!r}, not its folder's")
    if (record.cache_root, record.seconds, record.cached) != ("", 0.0, False):
        raise _Broken(f"it holds facts of one run ({', '.join(_PER_RUN)}), which are never stored")
    if not record.outputs.keys() == record.sha256.keys() == record.sizes.keys():
        raise _Broken("its outputs, sha256 and sizes do not name the same files")
    own = cache_dir.resolve() / directory.relative_to(cache_dir)
    for name, relative in record.outputs.items():
        output = cache_dir / relative
        if not _inside(output, own):
            raise _Broken(f"output {name!r} names {relative!r}, outside its folder")
        try:
            content = _stored_content(output, record.sizes[name])
        except OSError as exc:
            raise _Broken(f"output {name!r} ({output}) unreadable ({exc.strerror or exc})") from exc
        if content != (record.sha256[name], record.sizes[name]):
            raise _Broken(f"output {name!r} ({output}) changed since it was recorded")
    return record


@dataclass(frozen=True, eq=False)
class Stage(Generic[P, R]):
    """One cached step (declared with :func:`stage`): ``compute(out, *args)`` writes its files
    into the fresh folder ``out`` and returns its record (absolute paths)."""

    name: str
    compute: Callable[Concatenate[Path, P], R]
    files: tuple[str, ...]
    keys: Mapping[str, Callable[[Any], Any]]
    code: tuple[str, ...]
    record_type: type[R]
    heavy: bool
    version: int

    @property
    def signature(self) -> inspect.Signature:
        parameters = list(inspect.signature(self.compute).parameters.values())[1:]
        return inspect.Signature(parameters, return_annotation=self.record_type)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key of these arguments: ``files`` by content, others by the stage's ``keys``
        function of them or else :func:`key_value`."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        inputs = {
            name: files_key(value) if name in self.files else self.keys.get(name, key_value)(value)
            for name, value in bound.arguments.items()
        }
        code = code_sha256((self.compute.__module__, *SHARED_CODE, *self.code))
        recipe = {"stage": self.name, "stage_version": self.version, "code": code, "inputs": inputs}
        return sha256_json(recipe)

    def device(self, *args: P.args, **kwargs: P.kwargs) -> str | None:
        """The device a heavy stage runs on (its backend configuration's), else ``None``."""
        if not self.heavy:
            return None
        bound = self.signature.bind(*args, **kwargs)
        return next(v.device for v in bound.arguments.values() if isinstance(v, BackendConfig))

    def run(self, cache_dir: Path, *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`run_in` without a device slot."""
        return self.run_in(lambda device: contextlib.nullcontext(), cache_dir, *args, **kwargs)

    def run_in(self, slot: DeviceSlot, cache_dir: Path, *args: P.args, **kwargs: P.kwargs) -> R:
        """The verified record for these arguments in ``cache_dir``, from the cache or computed
        now (a heavy stage inside ``slot(device)``); ``seconds``: the time of this call."""
        start = time.perf_counter()
        cache, key = Path(cache_dir), self.key(*args, **kwargs)
        directory = stage_dir(cache, self.name, key)
        seen = _stamp(directory / RECORD)
        record = load_record(cache, directory, self.record_type)
        cached = record is not None
        if record is None:
            with _only_writer(cache, directory):
                if _stamp(directory / RECORD) != seen:  # a run sharing the cache stored it
                    record = load_record(cache, directory, self.record_type)
                cached = record is not None
                if record is None:
                    _clear_leftovers(cache, directory)
                    device = self.device(*args, **kwargs)
                    with slot(device) if device is not None else contextlib.nullcontext():
                        record = self.compute(directory, *args, **kwargs)
                    record = _store_in(record, cache, directory, key)
        seconds = time.perf_counter() - start
        return dataclasses.replace(record, cache_root=str(cache), seconds=seconds, cached=cached)


def _stamp(path: Path) -> tuple[int, int] | None:
    """``(inode, mtime ns)`` of ``path`` (not followed), or ``None``."""
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        return info.st_ino, info.st_mtime_ns
    return None


def _storage_error(cache_dir: Path, exc: OSError) -> StorageError:
    reason = (exc.strerror or str(exc)).lower()
    return StorageError(
        f"{cache_dir}: cannot write to this cache folder ({reason}) and a result in it must be "
        "computed again; make the folder writable, or choose another outputs.out",
        exc.errno,
        str(cache_dir),
    )


@contextlib.contextmanager
def _only_writer(cache_dir: Path, directory: Path) -> Iterator[None]:
    """Make ``directory`` a real folder (replacing a link or file in the way, not its target) and
    hold an exclusive ``flock`` on ``<key>.lock`` beside it for the block: a run computing the
    same result on this host waits (saying so), then finds its record (StorageError: unwritable)."""
    import fcntl  # POSIX, as every cache writer

    lock = directory.with_name(f"{directory.name}.lock")
    try:
        for folder in _folders(cache_dir, directory):
            if _not_a_folder(folder):
                folder.unlink(missing_ok=True)
            folder.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(lock) and not stat.S_ISREG(os.lstat(lock).st_mode):
            with contextlib.suppress(IsADirectoryError):  # a link, a special file
                lock.unlink()
            shutil.rmtree(lock, ignore_errors=True)  # a folder
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise _storage_error(cache_dir, exc) from exc
    with open(fd, "rb"):  # closing it drops the lock
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _log.info("%s: another run is computing it; waiting for it", directory)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # ENOLCK, EOPNOTSUPP...: a file system without locks
            _log.warning("%s: no lock (%s); computing it unlocked", lock, exc.strerror or exc)
        yield


def _clear_leftovers(cache_dir: Path, directory: Path) -> None:
    """Remove from ``directory`` links, special files, a folder in place of the record, and
    hidden files of a gone writer of this host (:func:`~segstyle_core.fileio.dead_writer_here`)
    or older than :data:`LEFTOVER_AGE_S` (StorageError: the cache cannot be written)."""
    try:
        stale = time.time() - LEFTOVER_AGE_S
        for entry in _entries(directory):
            folder = entry.is_dir(follow_symlinks=False)
            temporary = entry.name.startswith(".") and (
                dead_writer_here(entry.name) or entry.stat(follow_symlinks=False).st_mtime < stale
            )
            if folder and (temporary or entry.path == str(directory / RECORD)):
                shutil.rmtree(entry.path)
            elif temporary or not (folder or entry.is_file(follow_symlinks=False)):
                os.unlink(entry.path)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied", str(directory))
    except OSError as exc:
        raise _storage_error(cache_dir, exc) from exc


def _store_in(record: R, cache_dir: Path, directory: Path, key: str) -> R:
    """Make ``record``'s output paths relative to ``cache_dir``, hash and size them, and write
    the record (ValueError: an output outside ``directory``, a link or special file)."""
    own, root = directory.resolve(), cache_dir.resolve()
    outputs: dict[str, str] = {}
    sha256: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for name, path in record.outputs.items():
        if not _inside(Path(path), own):
            raise ValueError(f"stage output {name!r} ({path}) is outside its folder {directory}")
        try:
            sha256[name], sizes[name] = _stored_content(Path(path), None)
        except _Broken as broken:
            raise ValueError(f"stage output {name!r}: {broken}") from None
        outputs[name] = os.path.relpath(Path(path).resolve(), root)
    stored = dataclasses.replace(record, outputs=outputs, sha256=sha256, sizes=sizes, cache_key=key)
    document = {k: v for k, v in dataclasses.asdict(stored).items() if k not in _PER_RUN}
    write_json_atomic(directory / RECORD, document)
    return stored


def stage(
    name: str,
    *,
    files: tuple[str, ...] = (),
    keys: Mapping[str, Callable[[Any], Any]] | None = None,
    code: tuple[str, ...] = (),
    heavy: bool = False,
    version: int = 1,
) -> Callable[[Callable[Concatenate[Path, P], R]], Stage[P, R]]:
    """Declare a compute function as the stage ``name`` (TypeError: ``files`` or ``keys`` name
    a parameter it lacks): ``files`` name input files (a path, list of paths or ``None``) keyed
    by content; ``keys`` map a parameter to the part of its value that changes the output;
    ``code`` names other modules (or packages) whose source is keyed; a ``heavy`` stage computes
    in its backend's device slot; bump ``version`` for a format change the code hash misses."""

    def declare(compute: Callable[Concatenate[Path, P], R]) -> Stage[P, R]:
        parameters = list(inspect.signature(compute).parameters)[1:]
        unknown = sorted((set(files) | set(keys or {})) - set(parameters))
        if unknown:
            raise TypeError(f"stage {name}: no parameter {', '.join(unknown)} in {parameters}")
        record_type = get_type_hints(compute)["return"]  # resolved here, once, by name
        return Stage(name, compute, files, dict(keys or {}), code, record_type, heavy, version)

    return declare
