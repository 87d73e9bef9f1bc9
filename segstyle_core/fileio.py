"""Atomic file writes (a temporary file in the destination folder renamed over the target, so
a reader never sees a half-written file, even after SIGKILL) and content hashes."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from segstyle_core.errors import ConfigError, StorageError, is_transient_os_error, storage_error

_UMASK = os.umask(0)
os.umask(_UMASK)
#: Mode of files we write: what ``open()`` would give (mkstemp's temporary files are 0600).
FILE_MODE = 0o666 & ~_UMASK


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@functools.cache
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_file`, computed once per ``(path, size, mtime_ns)`` in this process."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _sha256_of_version(str(resolved), stat.st_size, stat.st_mtime_ns)


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """Return the hex SHA-256 of ``value`` serialised as canonical JSON (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(text.encode())


#: The first 8 hex digits of the SHA-256 of this host's name: which host made a temporary file.
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def dead_writer_here(name: str) -> bool:
    """Whether the temporary file ``name`` (``.<stem>.<HOST_TAG>-<pid>.<random><suffix>``) is
    the leftover of a killed writer process of this host."""
    found = re.match(r"\.(?:.*\.)?([0-9a-f]{8})-(\d+)\.", name)
    if found is None or found.group(1) != HOST_TAG or int(found.group(2)) == os.getpid():
        return False
    try:
        os.kill(int(found.group(2)), 0)
    except OSError as exc:  # else (EPERM) alive, another user's
        return isinstance(exc, ProcessLookupError)
    return False


@contextlib.contextmanager
def _temporary_sibling(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target`` (same suffix), renamed over it if the block succeeds,
    else removed. A lasting OS error is raised as a :class:`StorageError` naming ``target``; a
    transient one unchanged, so that retries still see a plain :class:`OSError`."""
    tmp_name = ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{target.stem}.{HOST_TAG}-{os.getpid()}."
        fd, tmp_name = tempfile.mkstemp(suffix=target.suffix, prefix=prefix, dir=target.parent)
        os.close(fd)
        yield Path(tmp_name)
        os.chmod(tmp_name, FILE_MODE)
        os.replace(tmp_name, target)
    except BaseException as exc:
        if tmp_name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            if not is_transient_os_error(exc):
                reported = os.fsdecode(exc.filename) if exc.filename is not None else None
                named = target if reported in (None, tmp_name) else reported
                raise storage_error(exc, named) from exc
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """A temporary sibling of ``path`` open for writing, fsynced and renamed over it on success."""
    with _temporary_sibling(Path(path)) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> Path:
    """``writer(tmp_path)`` (same suffix as ``path``), renamed over ``path``: for libraries that
    write to a path themselves (Pillow, pyarrow)."""
    with _temporary_sibling(Path(path)) as tmp:
        writer(tmp)
    return Path(path)


def check_writable_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """``folder``, checked to be (or be creatable as) a writable folder: ConfigError naming
    ``what`` when a part of it is a file or its nearest existing folder is not writable."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is a file, not a folder; choose another path")
    try:  # a real probe: permission bits say nothing for root, /proc or a read-only mount
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".segstyle-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"{what}: folder {existing} is not writable ({exc.strerror or exc}); choose another "
            "folder or fix its permissions"
        ) from None
    return Path(folder)


def copy_atomic(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy ``source`` to ``target`` atomically (a reader never sees half a file)."""
    return atomic_write_with(target, lambda tmp: shutil.copyfile(source, tmp))


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(value, handle, indent=1, default=str)
    return Path(path)


def file_name_part(text: str) -> str:
    """``text`` as part of a file name: runs of other characters than ``\\w.+-`` become ``_``."""
    return re.sub(r"[^\w.+-]+", "_", text, flags=re.ASCII).strip("_.") or "x"
