"""One exception family. Every message is a single line that names the file and the fix."""

from __future__ import annotations

import errno as _errno
import os


class SegstyleError(Exception):
    """Base class of every error segstyle raises on purpose (bad input, weights, config)."""


class InputError(SegstyleError):
    """An input file or value is unusable: unreadable image, wrong size, bad prompt."""


class WeightsError(SegstyleError):
    """A model checkpoint is missing, corrupt, unsafe or fails its checksum."""


class ConfigError(SegstyleError):
    """An option or a combination of options is invalid (unknown class, bad variant)."""


class ResourceError(SegstyleError):
    """The machine ran out of memory for this input; the message says what to shrink."""


class StorageError(SegstyleError, OSError):
    """Reading or writing a file failed for a lasting reason (disk full, permission denied,
    ...); also an :class:`OSError` with the original ``errno`` and ``filename``."""

    def __init__(self, message: str, errno_: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno = errno_
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[type[StorageError], tuple[str, int | None, str | None]]:
        """Pickled whole (a Dask worker's error reaches the flow with its errno and path)."""
        return type(self), (str(self), self.errno, self.filename)


#: errno -> what happened and what to do (after ``"<path>: "``); these do not go away on a retry.
_OS_ERROR_FIXES: dict[int, str] = {
    _errno.ENOSPC: "no space left on device; free space and rerun",
    _errno.EDQUOT: "disk quota exceeded; free space or raise the quota and rerun",
    _errno.EFBIG: "file too large for this file system; write to another one and rerun",
    _errno.EACCES: "permission denied; fix the permissions or choose another path",
    _errno.EPERM: "operation not permitted; fix the permissions or choose another path",
    _errno.EROFS: "read-only file system; choose a writable location and rerun",
    _errno.ENOENT: "no such file or directory; check the path",
    _errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    _errno.EISDIR: "is a directory; give a file name",
    _errno.ENAMETOOLONG: "file name too long; choose a shorter path",
    _errno.ELOOP: "too many levels of symbolic links; check the path",
    _errno.EMFILE: "too many open files; raise the limit (ulimit -n) and rerun",
    _errno.ENFILE: "too many open files on this system; close some programs and rerun",
}


def os_error_message(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """``"<path, else exc.filename>: <what happened>; <what to do>"`` for an :class:`OSError`."""
    if isinstance(exc, StorageError):
        return str(exc)
    where = path if path is not None else exc.filename
    fix = _OS_ERROR_FIXES.get(exc.errno or 0)
    if fix is None:
        what = (exc.strerror or str(exc) or type(exc).__name__).splitlines()[0]
        fix = f"{what.rstrip('.').lower()}; check the path and rerun"
    return f"{os.fsdecode(where)}: {fix}" if where is not None else fix


def is_transient_os_error(exc: OSError) -> bool:
    """Whether retrying may help: not for the lasting errors this module words."""
    return not isinstance(exc, StorageError) and exc.errno not in _OS_ERROR_FIXES


def storage_error(exc: OSError, path: str | os.PathLike[str] | None = None) -> StorageError:
    """:class:`StorageError` with :func:`os_error_message`'s line; ``raise ... from exc``."""
    where = path if path is not None else exc.filename
    filename = os.fsdecode(where) if where is not None else None
    return StorageError(os_error_message(exc, path), exc.errno, filename)


def error_line(exc: BaseException) -> str:
    """``"<Type>: <first line>"`` of any exception (OSErrors by :func:`os_error_message`)."""
    text = os_error_message(exc) if isinstance(exc, OSError) else str(exc)
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def one_line(text: str, limit: int) -> str:
    """``text`` on one line, cut at a word before ``limit`` characters (then ending in ``…``)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    return (cut.rpartition(" ")[0] or cut).rstrip(" ,;:(") + "…"
