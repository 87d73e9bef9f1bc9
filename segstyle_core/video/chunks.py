"""One chunk of a video run, from frame files to result files: track, stylize, composite.

A video is processed in chunks of consecutive frames so that each chunk can be cached and
retried on its own. Chunk ``k+1`` starts from what chunk ``k`` ended with (a :class:`Carry`:
its last input frame, mask, painting and output frame), so the chunks run one after the other
and the result is the same as one pass over the whole video. The first chunk starts from the
box prompt instead.

A chunk writes, for each frame index ``i``, ``output_{i:06d}.png`` (the composited frame) and
``mask_{i:06d}.png``, plus ``painting.png`` (its last frame's painting, for the next chunk). Its
record (JSON-able) names them under ``outputs`` and lists per frame ``index``, ``flicker``
(:func:`segstyle_core.video.temporal.flicker`) and ``mask_area`` (pixels).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segstyle_core.errors import ConfigError
from segstyle_core.images import read_mask, read_rgb, write_png
from segstyle_core.segment.base import Prompt
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


def record_paths(record: Mapping[str, Any], kind: str) -> list[Path]:
    """The ``"output"`` or ``"mask"`` files of a chunk record, in frame order."""
    prefix = f"{kind}_"
    names = sorted(name for name in record["outputs"] if name.startswith(prefix))
    return [Path(record["outputs"][name]) for name in names]


def carry_of(record: Mapping[str, Any]) -> Carry:
    """The :class:`Carry` a chunk record hands to the next chunk."""
    return Carry(
        frame=Path(record["last_frame"]),
        mask=record_paths(record, "mask")[-1],
        painting=Path(record["outputs"]["painting"]),
        output=record_paths(record, "output")[-1],
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
) -> dict[str, Any]:
    """Track, stylize and composite one chunk; write its files into ``out_dir``; return the record.

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
    return {"outputs": outputs, "frames": rows, "last_frame": str(frame_paths[-1])}
