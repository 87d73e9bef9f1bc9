"""Streamed video I/O of ``H×W×3 uint8 RGB`` frames: container files (by suffix, MP4 ...) with
PyAV, and frame folders (PNG files in sorted-name order, e.g. one Cityscapes sequence) whose
frame rate lives in a ``video.json`` sidecar (``{"fps": 17.0}``; default :data:`DEFAULT_FPS`).
Video files are H.264 at :data:`CRF` in ``yuv420p`` (``yuv444p`` for a side of odd length)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av
import numpy as np

from segstyle_core.errors import ConfigError, InputError
from segstyle_core.fileio import atomic_write_with, check_writable_folder, write_json_atomic
from segstyle_core.images import check_rgb, read_rgb, write_png

#: Frame rate of a frame folder without a ``video.json``: the Cityscapes camera's 17 Hz.
DEFAULT_FPS = 17.0
SIDECAR = "video.json"
#: The frame rates a sidecar may give and a video be written at (a container stores its rate
#: as a fraction of denominator at most 1001: far slower rounds to 0).
FPS_RANGE = (0.01, 10_000.0)
CONTAINER_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")
CODEC: Final = "libx264"
#: Constant quality: 0 lossless .. 51 worst; 18 is about visually lossless.
CRF: Final = 18
_FRAME_NAME = re.compile(r"frame_(\d+)")


def is_container(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names a video file (by suffix), False for a frame folder."""
    return Path(path).suffix.lower() in CONTAINER_SUFFIXES


def check_video_output(video: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Check, before any work, that the result can go to ``output`` (not the input, inside it or
    holding it; a writable folder); return its path (ConfigError: one line naming the fix)."""
    source = Path(video).expanduser().resolve()
    target = Path(output).expanduser().resolve()
    if target == source or target.is_relative_to(source) or source.is_relative_to(target):
        raise ConfigError(
            f"{output}: is, holds or lies inside the input {video}; writing it would destroy the "
            "input, so write the result elsewhere"
        )
    check_writable_folder(target.parent, str(output))
    return target


def frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """A frame folder's PNG files, sorted by name (InputError: no folder or no PNG file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            f"{folder}: no such video file or frame folder; pass an MP4 or a folder of PNG frames"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise InputError(f"{folder}: the folder holds no PNG frames; put frame PNGs in it")
    return files


def _open_input(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: no such video file; check the path")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"{path}: not a readable video ({exc}); re-export it as MP4") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: the file has no video stream; pass a video file")
    return container


def check_fps(fps: object) -> float:
    """``fps`` as a float if it is a number in :data:`FPS_RANGE`, else ValueError."""
    if not isinstance(fps, int | float) or not FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
        raise ValueError(f"fps={fps!r}, not between {FPS_RANGE[0]:g} and {FPS_RANGE[1]:g}")
    return float(fps)


def video_fps(path: str | os.PathLike[str]) -> float:
    """The frame rate in a video file's header or a frame folder's ``video.json``, else
    :data:`DEFAULT_FPS` (InputError: an unreadable file, or a sidecar without an ``fps`` number
    in :data:`FPS_RANGE`)."""
    path = Path(path)
    if is_container(path):
        with _open_input(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return float(rate) if rate else DEFAULT_FPS
    sidecar = path / SIDECAR
    if not sidecar.is_file():
        return DEFAULT_FPS
    try:
        fps = check_fps(json.loads(sidecar.read_text())["fps"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f'{sidecar}: unreadable ({exc}); write {{"fps": 17.0}} into it or delete it'
        ) from None
    return float(fps)


def iter_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """The frames of a video file or frame folder in order, one at a time (InputError: missing,
    unreadable or corrupt input)."""
    path = Path(path)
    if not is_container(path):
        yield from map(read_rgb, frame_files(path))
        return
    with _open_input(path) as container:
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: corrupt video data ({exc}); re-export the file") from None


def _checked(frames: Iterable[np.ndarray], name: Path) -> Iterator[np.ndarray]:
    """``frames``, each checked to be ``H×W×3 uint8`` of the first frame's size (and not none)."""
    size: tuple[int, ...] | None = None
    for index, frame in enumerate(frames):
        check_rgb(frame, f"frame {index} for {name}")
        if size is not None and frame.shape[:2] != size:
            raise InputError(
                f"{name}: frame {index} is {frame.shape[1]}x{frame.shape[0]} but the video is "
                f"{size[1]}x{size[0]}; resize the frames to one size first"
            )
        size = frame.shape[:2]
        yield frame
    if size is None:
        raise InputError(f"{name}: no frames to write; the input video is empty")


def _encode(target: Path, frames: Iterable[np.ndarray], fps: float, name: Path) -> None:
    """Encode ``frames`` into ``target``, a temporary stand-in for the file ``name``."""
    with av.open(str(target), mode="w") as container:
        rate = Fraction(fps).limit_denominator(1001)
        stream = container.add_stream(CODEC, rate=rate, options={"crf": str(CRF)})
        for index, frame in enumerate(_checked(frames, name)):
            if index == 0:
                height, width = frame.shape[:2]
                stream.height, stream.width = height, width
                stream.pix_fmt = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


def _write_folder(folder: Path, frames: Iterable[np.ndarray], fps: float) -> None:
    """Write ``frame_000000.png``, ... and ``video.json``; drop older frames past the new last."""
    count = 0
    for count, frame in enumerate(_checked(frames, folder), start=1):
        write_png(folder / f"frame_{count - 1:06d}.png", frame)
    for stale in folder.glob("frame_*.png"):
        number = _FRAME_NAME.fullmatch(stale.stem)
        if number is not None and int(number.group(1)) >= count:
            stale.unlink()
    write_json_atomic(folder / SIDECAR, {"fps": float(fps)})


def write_video(path: str | os.PathLike[str], frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write ``frames`` (one size, consumed one at a time) as a container file (encoded into a
    temporary sibling, renamed into place when complete) or a frame folder (``frame_000000.png``,
    ... each atomic, and ``video.json``); return ``path``. ConfigError: ``fps`` outside
    :data:`FPS_RANGE`; InputError: no frames, a frame that is not RGB, or frames of different
    sizes."""
    try:
        fps = check_fps(fps)
    except ValueError as exc:
        raise ConfigError(f"{exc}; give a frame rate in that range") from None
    target = Path(path)
    if not is_container(target):
        _write_folder(target, frames, fps)
        return target
    return atomic_write_with(target, lambda tmp: _encode(tmp, frames, fps, target))


def publish_encoded(
    encoded: str | os.PathLike[str], output: str | os.PathLike[str], fps: float
) -> Path:
    """Put an encoded result at ``output``: a container file is copied atomically, a frame
    folder rewritten from its frames."""
    if is_container(output):
        return atomic_write_with(output, lambda tmp: shutil.copyfile(encoded, tmp))
    return write_video(output, iter_frames(encoded), fps)
