"""Content-addressed, verified stage results on disk, and the :class:`Stage` that computes one.

A stage result lives in ``<cache_dir>/<stage>/<key[:2]>/<key>/`` with its output files and a
``record.json`` written last (atomically). The key is the SHA-256 of the stage name, its manual
version (:data:`STAGE_VERSIONS`), the SHA-256 of the source of the modules that compute it,
the SHA-256 of every input file's bytes and the stage's configuration (which carries the
weights' SHA-256 for model stages).

Records are JSON, never pickle. They name their files relative to the cache folder and store
each file's SHA-256; a record counts only while every file it names still has that content, so
a deleted, truncated or replaced output is recomputed (and logged once), and a half-finished
stage (killed before its record was written) is never read. Nothing outside ``cache_dir`` is
read or written, so two output folders never share or break each other's results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, get_type_hints

from segstyle_core.backends import BackendConfig
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
_log = logging.getLogger("segstyle.cache")


@dataclass(frozen=True, kw_only=True)
class StageRecord:
    """What a stage leaves behind: its output files and the facts later stages need.

    Stages subclass it with their own typed fields. ``outputs`` maps output names to paths
    relative to ``cache_root`` (use :meth:`path`); the bookkeeping fields are filled by
    :meth:`Stage.run`.

    Attributes:
        outputs: output name -> file path (relative to the cache folder once stored).
        sha256: output name -> SHA-256 of the file's bytes.
        cache_key: the stage key (see the module docstring).
        cache_root: the cache folder the record was read from or written to.
        seconds: wall time spent on this stage in this run (a cache hit: the lookup only).
        cached: whether the record came from the cache.
    """

    outputs: dict[str, str]
    sha256: dict[str, str] = field(default_factory=dict)
    cache_key: str = ""
    cache_root: str = ""
    seconds: float = 0.0
    cached: bool = False

    def path(self, name: str) -> str:
        """Absolute path of output ``name``."""
        return str(Path(self.cache_root) / self.outputs[name])


#: Fields of :class:`StageRecord` that describe one run's use of a record, never stored.
_PER_RUN = ("cache_root", "seconds", "cached")

R = TypeVar("R", bound=StageRecord)
P = ParamSpec("P")

#: A device's concurrency slot: ``slot(device)`` is held while a heavy stage computes.
DeviceSlot = Callable[[str], AbstractContextManager[Any]]


def no_slot(device: str) -> AbstractContextManager[Any]:
    """No concurrency limit (a single process running one stage at a time)."""
    return contextlib.nullcontext()


@dataclass(frozen=True)
class StageKey:
    """The inputs of a stage's cache key: its input files and its JSON-able configuration."""

    files: Mapping[str, str | os.PathLike[str]]
    config: Any


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


def output_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of an output: a file's bytes, or a folder's file names and bytes (recursive)."""
    root = Path(path)
    if not root.is_dir():
        return file_sha256(root)
    entries = sorted(p for p in root.rglob("*") if p.is_file())
    return sha256_json({str(p.relative_to(root)): file_sha256(p) for p in entries})


def stage_key(
    stage: str,
    files: Mapping[str, str | os.PathLike[str]],
    config: Any,
    code: tuple[str, ...] = (),
) -> str:
    """The cache key of one stage run (see the module docstring)."""
    return sha256_json(
        {
            "stage": stage,
            "stage_version": STAGE_VERSIONS[stage],
            "code": code_sha256(code),
            "files": {name: file_sha256(path) for name, path in sorted(files.items())},
            "config": config,
        }
    )


def stage_dir(cache_dir: str | os.PathLike[str], stage: str, key: str) -> Path:
    """Directory of one stage result."""
    return Path(cache_dir) / stage / key[:2] / key


def load_record(cache_dir: Path, directory: Path, record_type: type[R]) -> R | None:
    """The stored record if every file it names still has its recorded SHA-256, else ``None``.

    A record that exists but fails that check is logged (once, here) and then ignored, so the
    stage is computed again and overwrites it.
    """
    try:
        stored = json.loads((directory / RECORD).read_text())
        record = record_type(**stored)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        _log.warning("%s: unreadable cache record (%s); computing it again", directory, exc)
        return None
    for name, relative in record.outputs.items():
        path = cache_dir / relative
        try:
            intact = output_sha256(path) == record.sha256.get(name)
        except OSError:
            intact = False
        if not intact:
            _log.warning("%s: cached file missing or changed; computing it again", path)
            return None
    return record


@dataclass(frozen=True)
class Stage(Generic[P, R]):
    """One cached step of the pipeline: a key function and a compute function.

    ``compute(out, *args)`` writes its files into the fresh folder ``out`` and returns its
    record (output paths absolute, under ``out``); ``key(*args)`` names what the result
    depends on. Both take the same arguments, one of which is ``cache_dir``.
    """

    name: str
    key: Callable[P, StageKey]
    compute: Callable[Concatenate[Path, P], R]
    code: tuple[str, ...]
    record_type: type[R]
    heavy: bool = False

    @property
    def signature(self) -> inspect.Signature:
        """The stage's parameters: the compute function's, without ``out``."""
        parameters = list(inspect.signature(self.compute).parameters.values())[1:]
        return inspect.Signature(parameters, return_annotation=self.record_type)

    def locate(self, *args: P.args, **kwargs: P.kwargs) -> tuple[Path, str]:
        """``(cache_dir, key)`` of this stage for these arguments (hashes the input files)."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        inputs = self.key(*args, **kwargs)
        code = (self.compute.__module__, *SHARED_CODE, *self.code)
        key = stage_key(self.name, inputs.files, inputs.config, code)
        return Path(bound.arguments["cache_dir"]), key

    def cached(self, *args: P.args, **kwargs: P.kwargs) -> R | None:
        """The verified cached record for these arguments, or ``None``; computes nothing."""
        cache_dir, key = self.locate(*args, **kwargs)
        return load_record(cache_dir, stage_dir(cache_dir, self.name, key), self.record_type)

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The verified cached record of this stage for these arguments, or a new one.

        The record's ``seconds`` is the time spent here in this call and ``cached`` says
        whether it came from disk.
        """
        return self.run_in(no_slot, *args, **kwargs)

    def device(self, *args: P.args, **kwargs: P.kwargs) -> str | None:
        """The device a heavy stage runs on (its backend configuration's), else ``None``."""
        if not self.heavy:
            return None
        bound = self.signature.bind(*args, **kwargs)
        return next(v.device for v in bound.arguments.values() if isinstance(v, BackendConfig))

    def run_in(self, slot: DeviceSlot, *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`run`, computing a heavy stage inside ``slot(device)`` (a cache hit takes no
        slot, so it never waits behind another stage's computation)."""
        start = time.perf_counter()
        cache_dir, key = self.locate(*args, **kwargs)
        directory = stage_dir(cache_dir, self.name, key)
        record = load_record(cache_dir, directory, self.record_type)
        cached = record is not None
        if record is None:
            directory.mkdir(parents=True, exist_ok=True)
            device = self.device(*args, **kwargs)
            with slot(device) if device is not None else contextlib.nullcontext():
                record = self.compute(directory, *args, **kwargs)
            record = _store_in(record, cache_dir, directory, key)
        return dataclasses.replace(
            record,
            cache_root=str(cache_dir),
            seconds=time.perf_counter() - start,
            cached=cached,
        )


def _store_in(record: R, cache_dir: Path, directory: Path, key: str) -> R:
    """Make ``record``'s output paths relative to ``cache_dir``, hash them, write the record."""
    relative = {
        name: os.path.relpath(Path(path).resolve(), cache_dir.resolve())
        for name, path in record.outputs.items()
    }
    digests = {name: output_sha256(path) for name, path in record.outputs.items()}
    stored = dataclasses.replace(record, outputs=relative, sha256=digests, cache_key=key)
    document = {k: v for k, v in dataclasses.asdict(stored).items() if k not in _PER_RUN}
    write_json_atomic(directory / RECORD, document)
    return stored


def stage(
    name: str, *, key: Callable[P, StageKey], code: tuple[str, ...] = (), heavy: bool = False
) -> Callable[[Callable[Concatenate[Path, P], R]], Stage[P, R]]:
    """Declare a compute function as the stage ``name`` (see :class:`Stage`).

    Args:
        key: the cache-key inputs for the stage's arguments.
        code: modules (or packages) besides the compute function's own whose source is part of
            the key, so that a changed algorithm never serves old results.
        heavy: a model stage: it computes inside its device's slot (see :meth:`Stage.run_in`);
            its device is that of its backend-configuration argument.
    """

    def declare(compute: Callable[Concatenate[Path, P], R]) -> Stage[P, R]:
        parameters = list(inspect.signature(compute).parameters)
        if parameters[1:] != list(inspect.signature(key).parameters):
            raise TypeError(f"stage {name}: its key function must take {parameters[1:]}")
        record_type = get_type_hints(compute)["return"]  # resolved here, once, by name
        return Stage(name, key, compute, code, record_type, heavy)

    return declare
