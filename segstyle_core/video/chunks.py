"""One chunk of a video run: track, stylize, composite. Chunk ``k+1`` starts from what chunk
``k`` ended with (a :class:`Carry`), so the result is that of one pass over the video.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
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
    """What a chunk hands on: its last input frame, mask (0/255), painting and output PNGs."""

    frame: Path
    mask: Path
    painting: Path
    output: Path

    def files(self) -> dict[str, Path]:
        """The four files by name, for cache keys."""
        return {f"carry_{field.name}": getattr(self, field.name) for field in fields(self)}


def _identity(backend: Any) -> dict[str, Any]:
    """``name``, ``variant`` and ``weights_sha256`` of a built tracker or stylizer."""
    return {name: getattr(backend, name) for name in ("name", "variant", "weights_sha256")}


@dataclass(frozen=True, kw_only=True)
class ChunkRecord(StageRecord):
    """What one chunk wrote and measured: outputs ``output_{i:06d}`` (composited frame ``i``),
    ``mask_{i:06d}`` (PNG 0/255) and ``painting`` (the last frame's); per frame ``index``,
    ``flicker`` (``None`` on the first) and ``mask_area`` (pixels)."""

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
    """Track, stylize and composite ``frame_paths`` (video indices from ``first_index``) from
    ``start`` with ``style`` (``h×w×3 uint8``) into ``out_dir``.

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
