"""Content-addressed, verified stage results on disk, and the :class:`Stage` that computes one.

A stage result lives in ``<cache_dir>/<stage>/<key[:2]>/<key>/`` with its output files and a
``record.json`` written last (atomically). The key is the SHA-256 of the stage name, its manual
version (:data:`STAGE_VERSIONS`), the SHA-256 of the source of the modules that compute it,
and every argument of its compute function (:meth:`Stage.key`): the content of the files it
declares as ``files``, the output contents and facts of an earlier stage's record, and the
JSON of every other value (a configuration, a list of prompts), or what the stage's ``keys``
function makes of it.

Records are JSON, never pickle. They name their files relative to the cache folder and store
each file's SHA-256 and size. A cache folder may be shared, copied in or edited, so a record is
used only when it keeps every rule (:func:`load_record`):

- it parses as its stage's record type (strict types, no unknown field), names its own key and
  holds no facts of one run;
- the folders from ``cache_dir`` down to its own are real folders, not symbolic links;
- every output it names resolves inside its own folder (no ``..``, no absolute path, no link
  out);
- every output is a regular file (or a folder of them), never a symbolic link, device or FIFO,
  of the recorded size, read no further than that size, with the recorded SHA-256.

Otherwise it is a miss: logged once (one line naming the record and the broken rule), computed
again and overwritten, so a deleted, truncated, replaced or forged output is never read, and a
half-finished stage (killed before its record was written) is never used. A recomputed result is
written only into real folders under ``cache_dir``: a symbolic link or file in place of one of
its folders is replaced by a real folder, and links or special files inside its folder are
removed first. Nothing outside ``cache_dir`` is read or written, so two output folders never
share or break each other's results; a cache that cannot be written when a result must be
computed again is a :class:`~segstyle_core.errors.StorageError` naming the folder.
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
from pathlib import Path
from typing import IO, Any, ClassVar, Concatenate, Generic, ParamSpec, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from segstyle_core.backends import BackendConfig
from segstyle_core.errors import StorageError
from segstyle_core.fileio import file_sha256, sha256_bytes, sha256_json, write_json_atomic

#: Bump when a stage's output format changes in a way its code hash would not show.
STAGE_VERSIONS: dict[str, int] = {
    "gt": 1,
    "segment": 1,
    "stylize": 1,
    "composite": 2,
    "metrics": 2,
    "figures": 1,
    "video_frames": 1,
    "video_chunk": 1,
    "video_encode": 1,
    "video_score": 1,
}

#: Modules every stage's result depends on (how images are read and written).
SHARED_CODE = ("segstyle_core.images",)

RECORD = "record.json"
#: The largest ``record.json`` read (bytes); a larger one is a cache miss.
RECORD_LIMIT = 64 << 20
_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class StageRecord:
    """What a stage leaves behind: its output files and the facts later stages need.

    Stages subclass it with their own typed fields. ``outputs`` maps output names to paths
    relative to ``cache_root`` (use :meth:`path`); the bookkeeping fields are filled by
    :meth:`Stage.run`.

    Stored records are parsed strictly (:data:`__pydantic_config__`): a wrong type or an unknown
    field makes the record a cache miss.

    Attributes:
        outputs: output name -> file path (relative to the cache folder once stored).
        sha256: output name -> SHA-256 of the file's bytes (of a folder: :func:`content_sha256`).
        sizes: output name -> the file's size in bytes (of a folder: the sum of its files').
        cache_key: the stage key (see the module docstring).
        cache_root: the cache folder the record was read from or written to.
        seconds: wall time spent on this stage in this run (a cache hit: the lookup only).
        cached: whether the record came from the cache.
    """

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid", strict=True)

    outputs: dict[str, str]
    sha256: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    cache_key: str = ""
    cache_root: str = ""
    seconds: float = 0.0
    cached: bool = False

    def path(self, name: str) -> str:
        """Absolute path of output ``name``."""
        return str(Path(self.cache_root) / self.outputs[name])


#: Fields of :class:`StageRecord` that describe one run's use of a record, never stored.
_PER_RUN = ("cache_root", "seconds", "cached")
#: Fields of :class:`StageRecord` that a later stage's key leaves out (it keys the outputs'
#: contents, not where they lie or which key made them).
_NOT_KEYED = ("outputs", "sha256", "sizes", "cache_key", *_PER_RUN)

R = TypeVar("R", bound=StageRecord)
P = ParamSpec("P")

#: A device's concurrency slot: ``slot(device)`` is held while a heavy stage computes.
DeviceSlot = Callable[[str], AbstractContextManager[Any]]


def no_slot(device: str) -> AbstractContextManager[Any]:
    """No concurrency limit (a single process running one stage at a time)."""
    return contextlib.nullcontext()


@functools.cache
def code_sha256(modules: tuple[str, ...]) -> str:
    """SHA-256 of the source of ``modules`` (a package counts with every ``.py`` file in it)."""
    digests: list[str] = []
    for name in sorted(modules):
        module = importlib.import_module(name)
        origin = Path(inspect.getfile(module))
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        digests.extend(f"{name}:{file.name}:{file_sha256(file)}" for file in files)
    return sha256_bytes("\n".join(digests).encode())


def content_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, or of a folder's file names and bytes (recursive)."""
    root = Path(path)
    if not root.is_dir():
        return file_sha256(root)
    entries = sorted(p for p in root.rglob("*") if p.is_file())
    return sha256_json({str(p.relative_to(root)): file_sha256(p) for p in entries})


def files_key(value: Any) -> Any:
    """The key of a file input: the SHA-256 of the content of a path (a file or a folder), of
    each path of a list, or ``None``."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [files_key(item) for item in value]
    return content_sha256(value)


def key_value(value: Any) -> Any:
    """The JSON form of a stage input in its key.

    A record (of an earlier stage) counts by its outputs' SHA-256 and its facts, never by
    where its files lie; a configuration model by its JSON; a dataclass, mapping or sequence
    by its items. A file path is only a string here: a stage declares its file inputs
    (:func:`stage`'s ``files``) so that their content counts.

    Raises:
        TypeError: a value with no JSON form (declare a ``keys`` function for it).
    """
    if isinstance(value, StageRecord):
        facts = {
            f.name: key_value(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name not in _NOT_KEYED
        }
        contents = {
            name: value.sha256.get(name) or content_sha256(value.path(name))
            for name in value.outputs
        }
        return {"outputs": contents, **facts}
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
    """The key of a model backend: its identity (name, variant, weights' SHA-256) and the
    ``settings`` that change its output (never where it runs or where its weights lie)."""
    return {"identity": dataclasses.asdict(config.identity()), "settings": dict(settings)}


def stage_dir(cache_dir: str | os.PathLike[str], stage: str, key: str) -> Path:
    """Directory of one stage result."""
    return Path(cache_dir) / stage / key[:2] / key


def cache_of(directory: Path) -> Path:
    """The cache folder that holds the stage directory ``directory`` (see :func:`stage_dir`)."""
    return directory.parents[2]


class _Broken(Exception):
    """A stored record breaks a rule of the module docstring; the message says which."""


#: ``open`` flags for a cache file: never through a symbolic link (where the system has
#: ``O_NOFOLLOW``), never waiting on a FIFO.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_CHUNK = 1 << 20
#: SHA-256 of the files hashed in this process, by (device, inode, size, mtime, ctime).
_digests: dict[tuple[int, ...], str] = {}


@contextlib.contextmanager
def _open_regular(path: Path, most: int | None) -> Iterator[tuple[IO[bytes], os.stat_result]]:
    """``path`` open for reading, and its status, when it is a regular file of at most ``most``
    bytes (``None``: any size); never opened through a symbolic link.

    Raises:
        _Broken: a symbolic link, a folder, device, FIFO or socket, or a larger file.
        OSError: unreadable (``FileNotFoundError``: absent).
    """
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise _Broken(f"{path} is a symbolic link")
    if not stat.S_ISREG(mode):
        raise _Broken(f"{path} is not a regular file")
    # O_NOFOLLOW and fstat: a link or FIFO swapped in since the lstat is refused too
    with open(os.open(path, _READ_FLAGS), "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Broken(f"{path} is not a regular file")
        if most is not None and info.st_size > most:
            raise _Broken(f"{path} holds {info.st_size} bytes, more than the {most} recorded")
        yield handle, info


def _read_exactly(handle: IO[bytes], path: Path, size: int) -> Iterator[bytes]:
    """The ``size`` bytes of the open file ``path`` in chunks, and not one byte more.

    Raises:
        _Broken: the file ends sooner or holds more (it changed while being read).
    """
    left = size
    while left:
        chunk = handle.read(min(_CHUNK, left))
        if not chunk:
            raise _Broken(f"{path} shrank while being read")
        left -= len(chunk)
        yield chunk
    if handle.read(1):
        raise _Broken(f"{path} grew while being read")


def _file_digest(path: Path, most: int | None) -> tuple[str, int]:
    """SHA-256 and size of the regular file ``path`` of at most ``most`` bytes (see
    :func:`_open_regular`), reading no more than its size when opened; a file this process
    hashed before and that has not changed since is not read again."""
    with _open_regular(path, most) as (handle, info):
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        known = _digests.get(identity)
        if known is None:
            digest = hashlib.sha256()
            for chunk in _read_exactly(handle, path, info.st_size):
                digest.update(chunk)
            known = _digests[identity] = digest.hexdigest()
        return known, info.st_size


def _stored_content(path: Path, most: int | None) -> tuple[str, int]:
    """SHA-256 (as :func:`content_sha256` computes it) and size in bytes of an output: a
    regular file, or a real folder of regular files and real folders (the sum of their sizes),
    reading no more than ``most`` bytes in all (``None``: no limit).

    Raises:
        _Broken: a symbolic link or special file anywhere in it, or more than ``most`` bytes.
        OSError: unreadable (``FileNotFoundError``: absent).
    """
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
    """Every entry under ``folder`` (files, folders, links, ...), never descending through a
    symbolic link."""
    folders = [folder]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                yield entry


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves to a path inside (not at) ``folder``, a resolved path."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte in the name
        return False
    return resolved != folder and resolved.is_relative_to(folder)


def _folders(cache_dir: Path, directory: Path) -> Iterator[Path]:
    """The folders below ``cache_dir`` down to its stage directory ``directory``:
    ``<stage>``, ``<stage>/<xx>`` and ``<stage>/<xx>/<key>``."""
    folder = cache_dir
    for part in directory.relative_to(cache_dir).parts:
        folder = folder / part
        yield folder


def _not_a_folder(path: Path) -> bool:
    """Whether ``path`` exists as something other than a real folder (a link, a file, ...)."""
    mode = _mode(path)
    return mode is not None and not stat.S_ISDIR(mode)


def _mode(path: Path) -> int | None:
    """``path``'s type and mode, of a symbolic link itself; ``None`` when nothing is there."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None


#: The strict JSON parser of each record type (see :class:`StageRecord`), built once.
_parsers: dict[type[Any], TypeAdapter[Any]] = {}


def _parser(record_type: type[Any]) -> TypeAdapter[Any]:
    """The strict JSON parser of ``record_type``."""
    if record_type not in _parsers:
        _parsers[record_type] = TypeAdapter(record_type)
    return _parsers[record_type]


def _first_error(exc: ValidationError) -> str:
    """The first schema error of ``exc`` on one line: ``'<field path>': <message>``."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "record"
    return f"{where!r}: {first['msg']}"


def load_record(cache_dir: Path, directory: Path, record_type: type[R]) -> R | None:
    """The record in the stage directory ``directory`` of ``cache_dir`` when it keeps every
    rule of the module docstring (checking every file it names), else ``None``.

    A record that exists but breaks a rule is logged (once, here: one line naming the record
    and the rule) and then ignored, so the stage is computed again and overwrites it.
    """
    try:
        return _verified(cache_dir, directory, record_type)
    except _Broken as broken:
        rule = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(broken))
        _log.warning("%s: %s; computing it again", directory / RECORD, rule)
        return None


def _verified(cache_dir: Path, directory: Path, record_type: type[R]) -> R | None:
    """:func:`load_record` without its log line: ``None`` when there is no record.

    Raises:
        _Broken: the record breaks a rule (the message says which).
    """
    for folder in _folders(cache_dir, directory):
        if _not_a_folder(folder):
            raise _Broken(f"{folder} is a symbolic link or a file, not a folder of the cache")
    path = directory / RECORD
    try:
        with _open_regular(path, RECORD_LIMIT) as (handle, info):
            document = b"".join(_read_exactly(handle, path, info.st_size))
        record: R = _parser(record_type).validate_json(document)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Broken(f"unreadable ({exc.strerror or exc})") from exc
    except ValidationError as exc:
        raise _Broken(f"not a valid {record_type.__name__} ({_first_error(exc)})") from exc
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
    """One cached step of the pipeline (declared with :func:`stage`).

    ``compute(out, *args)`` writes its files into the fresh folder ``out`` and returns its
    record (output paths absolute, under ``out``). Its arguments are the stage's inputs, and
    all of them make up its key (:meth:`key`); the cache folder is the caller's (the runner's)
    and no input.
    """

    name: str
    compute: Callable[Concatenate[Path, P], R]
    files: tuple[str, ...]
    keys: Mapping[str, Callable[[Any], Any]]
    code: tuple[str, ...]
    record_type: type[R]
    heavy: bool

    @property
    def signature(self) -> inspect.Signature:
        """The stage's parameters: the compute function's, without ``out``."""
        parameters = list(inspect.signature(self.compute).parameters.values())[1:]
        return inspect.Signature(parameters, return_annotation=self.record_type)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key of these arguments (hashes the input files; see the module docstring)."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        inputs = {
            name: files_key(value) if name in self.files else self.keys.get(name, key_value)(value)
            for name, value in bound.arguments.items()
        }
        return sha256_json(
            {
                "stage": self.name,
                "stage_version": STAGE_VERSIONS[self.name],
                "code": code_sha256((self.compute.__module__, *SHARED_CODE, *self.code)),
                "inputs": inputs,
            }
        )

    def device(self, *args: P.args, **kwargs: P.kwargs) -> str | None:
        """The device a heavy stage runs on (its backend configuration's), else ``None``."""
        if not self.heavy:
            return None
        bound = self.signature.bind(*args, **kwargs)
        return next(v.device for v in bound.arguments.values() if isinstance(v, BackendConfig))

    def run(self, cache_dir: Path, *args: P.args, **kwargs: P.kwargs) -> R:
        """The verified record of this stage for these arguments in ``cache_dir``, from the
        cache or computed now (see :meth:`run_in`)."""
        return self.run_in(no_slot, cache_dir, *args, **kwargs)

    def run_in(self, slot: DeviceSlot, cache_dir: Path, *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`run`, computing a heavy stage inside ``slot(device)`` (a cache hit takes no
        slot, so it never waits behind another stage's computation).

        The record's ``seconds`` is the time spent here in this call and ``cached`` says
        whether it came from disk.
        """
        start = time.perf_counter()
        key = self.key(*args, **kwargs)
        directory = stage_dir(cache_dir, self.name, key)
        record = load_record(Path(cache_dir), directory, self.record_type)
        cached = record is not None
        if record is None:
            _prepare_folder(Path(cache_dir), directory)
            device = self.device(*args, **kwargs)
            with slot(device) if device is not None else contextlib.nullcontext():
                record = self.compute(directory, *args, **kwargs)
            record = _store_in(record, Path(cache_dir), directory, key)
        return dataclasses.replace(
            record,
            cache_root=str(cache_dir),
            seconds=time.perf_counter() - start,
            cached=cached,
        )


def _prepare_folder(cache_dir: Path, directory: Path) -> None:
    """Make ``directory``, a stage directory of ``cache_dir``, a real writable folder to compute
    into.

    A symbolic link or file in place of a folder between ``cache_dir`` and ``directory`` is
    replaced by an empty real folder (what a link points to is left alone), and the symbolic
    links, special files and hidden (temporary: a killed writer's) files inside ``directory``
    are removed, as is a folder in place of its record, so that nothing the stage writes lands
    outside ``cache_dir`` and no half-written file outlives a recompute.

    Raises:
        StorageError: the cache folder cannot be written (one line naming it and the fix).
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for folder in _folders(cache_dir, directory):
            if _not_a_folder(folder):
                folder.unlink(missing_ok=True)
            folder.mkdir(exist_ok=True)
        if stat.S_ISDIR(_mode(directory / RECORD) or 0):
            shutil.rmtree(directory / RECORD)
        for entry in _entries(directory):
            temporary = entry.name.startswith(".")  # a killed writer's half-written file
            if temporary or not (
                entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)
            ):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied", str(directory))
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise StorageError(
            f"{cache_dir}: cannot write to this cache folder ({reason}) and a result in it must "
            "be computed again; make the folder writable, or choose another outputs.out",
            exc.errno,
            str(cache_dir),
        ) from exc


def _store_in(record: R, cache_dir: Path, directory: Path, key: str) -> R:
    """Make ``record``'s output paths relative to ``cache_dir``, hash and size them, and write
    the record.

    Raises:
        ValueError: the stage returned an output outside ``directory``, or a symbolic link or
            special file (a bug in the stage).
    """
    own = directory.resolve()
    contents: dict[str, tuple[str, int]] = {}
    for name, path in record.outputs.items():
        if not _inside(Path(path), own):
            raise ValueError(f"stage output {name!r} ({path}) is outside its folder {directory}")
        try:
            contents[name] = _stored_content(Path(path), None)
        except _Broken as broken:
            raise ValueError(f"stage output {name!r}: {broken}") from None
    stored = dataclasses.replace(
        record,
        outputs={
            name: os.path.relpath(Path(path).resolve(), cache_dir.resolve())
            for name, path in record.outputs.items()
        },
        sha256={name: digest for name, (digest, _) in contents.items()},
        sizes={name: size for name, (_, size) in contents.items()},
        cache_key=key,
    )
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
) -> Callable[[Callable[Concatenate[Path, P], R]], Stage[P, R]]:
    """Declare a compute function as the stage ``name`` (see :class:`Stage`).

    Args:
        files: the parameters that name input files (a path, a list of paths, or ``None``):
            their content is in the key, not their path (:func:`files_key`).
        keys: parameter -> the part of its value that changes the output (e.g. a backend's
            identity and settings, not its device); every other parameter counts whole
            (:func:`key_value`).
        code: modules (or packages) besides the compute function's own whose source is part of
            the key, so that a changed algorithm never serves old results.
        heavy: a model stage: it computes inside its device's slot (see :meth:`Stage.run_in`);
            its device is that of its backend-configuration argument.

    Raises:
        TypeError: ``files`` or ``keys`` name a parameter the compute function lacks.
    """

    def declare(compute: Callable[Concatenate[Path, P], R]) -> Stage[P, R]:
        parameters = list(inspect.signature(compute).parameters)[1:]
        unknown = sorted((set(files) | set(keys or {})) - set(parameters))
        if unknown:
            raise TypeError(f"stage {name}: no parameter {', '.join(unknown)} in {parameters}")
        record_type = get_type_hints(compute)["return"]  # resolved here, once, by name
        return Stage(name, compute, files, dict(keys or {}), code, record_type, heavy)

    return declare
