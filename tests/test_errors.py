"""OS errors become one line that names the path and says what to do."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from segstyle_core import fileio, images
from segstyle_core.errors import (
    SegstyleError,
    StorageError,
    error_line,
    is_transient_os_error,
    os_error_message,
    storage_error,
)


def _os_error(code: int, path: str | None = "/data/out.png") -> OSError:
    return OSError(code, os.strerror(code), path)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, "/data/out.png: no space left on device; free space and rerun"),
        (errno.EDQUOT, "/data/out.png: disk quota exceeded; free space or raise the quota"),
        (errno.EACCES, "/data/out.png: permission denied; fix the permissions or choose another"),
        (errno.EROFS, "/data/out.png: read-only file system; choose a writable location"),
        (errno.ENOENT, "/data/out.png: no such file or directory; check the path"),
        (errno.EMFILE, "/data/out.png: too many open files; raise the limit (ulimit -n)"),
    ],
)
def test_lasting_errors_name_the_path_and_the_fix(code: int, expected: str) -> None:
    exc = _os_error(code)
    message = os_error_message(exc)
    assert message.startswith(expected) and "\n" not in message
    assert not is_transient_os_error(exc)
    wrapped = storage_error(exc)
    assert isinstance(wrapped, SegstyleError) and isinstance(wrapped, OSError)
    assert str(wrapped) == message and wrapped.errno == code
    assert wrapped.filename == "/data/out.png"


def test_path_argument_wins_and_unknown_errors_keep_the_system_words() -> None:
    exc = _os_error(errno.ENOSPC, "/tmp/.out.x1y2.png")
    assert os_error_message(exc, Path("out.png")) == (
        "out.png: no space left on device; free space and rerun"
    )
    assert os_error_message(_os_error(errno.ENOSPC, None)) == (
        "no space left on device; free space and rerun"
    )
    odd = _os_error(errno.EIO)
    assert os_error_message(odd) == "/data/out.png: input/output error; check the path and rerun"
    assert is_transient_os_error(odd) and is_transient_os_error(TimeoutError("slow"))
    assert error_line(_os_error(errno.EROFS)).startswith("OSError: /data/out.png: read-only")
    assert error_line(ValueError("a\nb")) == "ValueError: a"


def test_a_storage_error_crosses_a_process_boundary_whole() -> None:
    """Pickled (as a Dask worker's task error is), it keeps its message, errno and path, and
    stays a lasting error: a retry would not help."""
    error = storage_error(_os_error(errno.ENOSPC))
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, StorageError) and isinstance(copy, OSError)
    assert (str(copy), copy.errno, copy.filename) == (str(error), errno.ENOSPC, "/data/out.png")
    assert not is_transient_os_error(copy)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_atomic_write_names_the_target_not_its_temporary_file(tmp_path: Path, code: int) -> None:
    target = tmp_path / "out.png"

    def full_disk(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(code, os.strerror(code), str(tmp))

    with pytest.raises(StorageError) as info:
        fileio.atomic_write_with(target, full_disk)
    assert str(info.value).startswith(f"{target}: ")
    assert info.value.errno == code and isinstance(info.value.__cause__, OSError)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone, no target either


def test_atomic_write_keeps_other_paths_and_transient_errors(tmp_path: Path) -> None:
    source = tmp_path / "missing-source.png"

    def copy_missing(tmp: Path) -> None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(source))

    with pytest.raises(StorageError, match=f"^{source}: no such file"):
        fileio.atomic_write_with(tmp_path / "out.png", copy_missing)

    def flaky(tmp: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(tmp))

    with pytest.raises(OSError) as info:
        fileio.atomic_write_with(tmp_path / "out.png", flaky)
    assert not isinstance(info.value, StorageError)  # still retried by the stage tasks


def test_write_image_on_a_full_disk_names_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src, None, dst)

    monkeypatch.setattr(os, "replace", no_space)
    target = tmp_path / "result.jpg"
    with pytest.raises(StorageError) as info:
        images.write_image(target, np.zeros((8, 8, 3), np.uint8))
    assert str(info.value) == f"{target}: no space left on device; free space and rerun"


def test_unreadable_image_is_a_permission_error_not_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.png"
    images.write_png(path, np.zeros((8, 8, 3), np.uint8))

    def denied(fp: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(fp))

    monkeypatch.setattr(images.Image, "open", denied)
    with pytest.raises(StorageError, match="locked.png: permission denied; fix the permissions"):
        images.read_rgb(path)
