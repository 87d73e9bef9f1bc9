"""Atomic file writes and content hashes.

Every output segstyle writes goes through :func:`atomic_write`: data lands in a temporary file
in the destination directory and is renamed over the target, so a reader never sees a
half-written file, even after SIGKILL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from segstyle_core.errors import StorageError, is_transient_os_error, storage_error

_CHUNK = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode of files we write: what ``open()`` would give (mkstemp's temporary files are 0600).
FILE_MODE = 0o666 & ~_umask()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


_memo_lock = threading.Lock()
_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, computed once per ``(path, size, mtime_ns)`` in this process.

    Cache keys and model registries hash the same inputs and checkpoints again and again;
    the memo makes every repeat free while any rewrite of the file changes the key.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _memo_lock:
        cached = _memo.get(key)
    if cached is None:
        cached = sha256_file(resolved)
        with _memo_lock:
            _memo[key] = cached
    return cached


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """Return the hex SHA-256 of ``value`` serialised as canonical JSON (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(text.encode())


def named_os_error(exc: OSError, target: str | os.PathLike[str], temporary: str = "") -> OSError:
    """``exc`` as a :class:`~segstyle_core.errors.StorageError` that names ``target`` (the file
    the user asked for, not ``temporary``, the hidden file it was being written through) and
    says what to do, when it is a lasting error (full disk, permissions, read-only); transient
    errors are returned unchanged so that retries still see a plain :class:`OSError`."""
    if isinstance(exc, StorageError) or is_transient_os_error(exc):
        return exc
    reported = os.fsdecode(exc.filename) if exc.filename is not None else None
    named = target if reported in (None, temporary) else reported
    return storage_error(exc, named)


@contextlib.contextmanager
def _temporary_sibling(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target`` (same suffix), renamed over it if the block succeeds.

    On any exception the temporary file is removed and ``target`` is left as it was. Lasting
    OS errors (disk full, permission denied, read-only) become a
    :class:`~segstyle_core.errors.StorageError` naming ``target`` (see :func:`named_os_error`).
    """
    tmp_name = ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent
        )
        os.close(fd)
        yield Path(tmp_name)
        os.chmod(tmp_name, FILE_MODE)
        os.replace(tmp_name, target)
    except BaseException as exc:
        if tmp_name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        if isinstance(exc, OSError):
            named = named_os_error(exc, target, tmp_name)
            if named is not exc:
                raise named from exc
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    The data is flushed to disk before the rename. On any exception the temporary file is
    removed and ``path`` is left as it was.
    """
    with _temporary_sibling(Path(path)) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` to produce a file, then rename it over ``path`` atomically.

    For libraries that insist on writing to a path themselves (Pillow, pyarrow). The
    temporary path keeps the target's suffix so format detection by extension works.
    """
    target = Path(path)
    with _temporary_sibling(target) as tmp:
        writer(tmp)
    return target


def check_writable_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """Check, before any work, that ``folder`` is (or can be created as) a writable folder.

    ``what`` names the option's value in the message (the output file or folder).

    Raises:
        ConfigError: a part of the path is a file, or the nearest existing folder is not
            writable (one line naming it and the fix).
    """
    from segstyle_core.errors import ConfigError

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

    def copy(tmp: Path) -> None:
        shutil.copyfile(source, tmp)

    return atomic_write_with(target, copy)


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically; return the path."""
    with atomic_write(path, "w") as handle:
        json.dump(value, handle, indent=1, default=str)
    return Path(path)
