"""One chunk of a video run, from frame files to result files: track, stylize, composite.

A video is processed in chunks of consecutive frames so that each chunk can be cached and
retried on its own. Chunk ``k+1`` starts from what chunk ``k`` ended with (a :class:`Carry`:
its last input frame, mask, painting and output frame), so the chunks run one after the other
and the result is the same as one pass over the whole video. The first chunk starts from the
box prompt instead.

A chunk writes, for each frame index ``i``, ``output_{i:06d}.png`` (the composited frame) and
``mask_{i:06d}.png``, plus ``painting.png`` (its last frame's painting, for the next chunk). Its
record (:class:`ChunkRecord`, the ``video_chunk`` stage's: see
:mod:`segstyle_core.video.stages`) names them under ``outputs`` and lists per frame ``index``,
``flicker`` (:func:`segstyle_core.video.temporal.flicker`) and ``mask_area`` (pixels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segstyle_core.errors import ConfigError
from segstyle_core.images import read_mask, read_rgb, write_png
from segstyle_core.segment.base import Prompt
from segstyle_core.stagecache import StageRecord
from segstyle_core.stylize.base import Stylizer
from segstyle_core.video.temporal import Previous, TemporalOptions, stylize_frame
from segstyle_core.video.track import MaskTracker


@dataclass(frozen=True)
class Carry:
    """What a chunk hands to the next one: files of its last frame.

    Attributes:
        frame: the last input frame (PNG).
        mask: its tracked mask (PNG, 0/255).
        painting: its blended painting (PNG).
        output: its composited output frame (PNG).
    """

    frame: Path
    mask: Path
    painting: Path
    output: Path

    def files(self) -> dict[str, Path]:
        """The four files by name, for cache keys."""
        return {
            "carry_frame": self.frame,
            "carry_mask": self.mask,
            "carry_painting": self.painting,
            "carry_output": self.output,
        }


def _identity(backend: Any) -> dict[str, Any]:
    """``name``, ``variant`` and ``weights_sha256`` of a built tracker or stylizer."""
    return {
        "name": backend.name,
        "variant": backend.variant,
        "weights_sha256": backend.weights_sha256,
    }


@dataclass(frozen=True, kw_only=True)
class ChunkRecord(StageRecord):
    """What one chunk wrote and measured.

    Outputs ``output_{i:06d}`` (composited frame ``i``), ``mask_{i:06d}`` (its tracked mask,
    PNG 0/255) for every frame of the chunk, and ``painting`` (the last frame's painting).

    Attributes:
        frames: one row per frame, in order: ``index`` (in the video), ``flicker`` (``None``
            on the video's first stylized frame) and ``mask_area`` (pixels).
        last_frame: the chunk's last input frame (the file it was given).
        tracker: ``name``, ``variant`` and ``weights_sha256`` of the tracker.
        stylizer: the same of the stylizer.
    """

    frames: list[dict[str, Any]]
    last_frame: str
    tracker: dict[str, Any]
    stylizer: dict[str, Any]

    def paths(self, kind: str) -> list[str]:
        """The ``"output"`` or ``"mask"`` files of the chunk, in frame order."""
        prefix = f"{kind}_"
        return [self.path(name) for name in sorted(self.outputs) if name.startswith(prefix)]

    def carry(self) -> Carry:
        """The :class:`Carry` this chunk hands to the next one."""
        return Carry(
            frame=Path(self.last_frame),
            mask=Path(self.paths("mask")[-1]),
            painting=Path(self.path("painting")),
            output=Path(self.paths("output")[-1]),
        )


def stylize_chunk(
    frame_paths: Sequence[str | os.PathLike[str]],
    first_index: int,
    start: Prompt | Carry,
    tracker: MaskTracker,
    stylizer: Stylizer,
    style: np.ndarray,
    options: TemporalOptions,
    out_dir: str | os.PathLike[str],
) -> ChunkRecord:
    """Track, stylize and composite one chunk; write its files into ``out_dir``; return the
    record (its output paths under ``out_dir``).

    Args:
        frame_paths: the chunk's frames (images of one size), in order.
        first_index: the video frame index of ``frame_paths[0]`` (names the output files).
        start: the box prompt on the chunk's first frame, or the previous chunk's carry.
        style: the style image, ``h×w×3 uint8 RGB``.

    Raises:
        ConfigError: no frames.
        InputError: unreadable frames, frames of different sizes, a prompt that does not fit.
    """
    if not frame_paths:
        raise ConfigError(f"chunk at frame {first_index} has no frames; give it at least one")
    out = Path(out_dir)
    frames = [read_rgb(path) for path in frame_paths]
    if isinstance(start, Carry):
        carried = read_rgb(start.frame)
        masks = tracker.track([carried, *frames], read_mask(start.mask))[1:]
        previous: Previous | None = Previous(
            carried, read_rgb(start.painting), read_rgb(start.output)
        )
    else:
        masks = tracker.track(frames, start)
        previous = None
    outputs: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for index, (frame, mask) in enumerate(zip(frames, masks, strict=True), start=first_index):
        result = stylize_frame(stylizer, style, frame, mask, previous, options)
        outputs[f"output_{index:06d}"] = str(
            write_png(out / f"output_{index:06d}.png", result.output)
        )
        outputs[f"mask_{index:06d}"] = str(write_png(out / f"mask_{index:06d}.png", mask))
        rows.append({"index": index, "flicker": result.flicker, "mask_area": int(mask.sum())})
        previous = Previous(frame, result.painting, result.output)
    outputs["painting"] = str(write_png(out / "painting.png", result.painting))
    return ChunkRecord(
        outputs=outputs,
        frames=rows,
        last_frame=str(frame_paths[-1]),
        tracker=_identity(tracker),
        stylizer=_identity(stylizer),
    )
