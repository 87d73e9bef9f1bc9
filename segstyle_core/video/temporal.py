"""Temporally stable stylization of a tracked object, and the flicker it leaves, chunk by chunk.

Each fresh painting is blended with the previous one carried along the optical flow (Ruder et
al. 2016, without the optimisation), then composited through the mask::

    painting_t = (1 - w) * stylize(frame_t) + w * warp(painting_{t-1}),   w = blend * valid

``valid`` drops pixels hidden in the previous frame (:func:`segstyle_core.video.track.motion`),
so uncovered background is painted fresh. Chunk ``k+1`` starts from chunk ``k``'s :class:`Carry`,
so the result is that of one pass over the video."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segstyle_core.composite import Layer, Mode, alpha_from_mask, composite_regions, resize_to
from segstyle_core.errors import ConfigError
from segstyle_core.images import check_mask, read_mask, read_rgb, write_png
from segstyle_core.segment.base import Prompt
from segstyle_core.stagecache import StageRecord
from segstyle_core.stylize.base import Stylizer
from segstyle_core.video.track import MaskTracker, Motion, motion, warp


@dataclass(frozen=True)
class TemporalOptions:
    """Settings of :func:`stylize_frame`: ``blend`` (``w`` above), the composite's ``mode`` and
    ``feather_px``."""

    blend: float = 0.6
    mode: Mode = "object"
    feather_px: float = 0.0


@dataclass(frozen=True)
class Painted:
    """One frame's input, blended painting and composited output, ``H×W×3 uint8 RGB``."""

    frame: np.ndarray
    painting: np.ndarray
    output: np.ndarray


def flicker(
    output: np.ndarray, previous_output: np.ndarray, step: Motion, region: np.ndarray
) -> float | None:
    """Mean absolute difference (grey levels, over the channels) between ``output`` and
    ``previous_output`` carried along ``step`` (``H×W×3 uint8``), over ``region & step.valid``
    (the stylized region where the flow is valid); ``None`` when that is empty."""
    where = region & step.valid
    if not where.any():
        return None
    carried = warp(previous_output, step.backward).astype(np.float32)
    return float(np.abs(output.astype(np.float32) - carried)[where].mean())


def stylize_frame(
    stylizer: Stylizer,
    style: np.ndarray,
    frame: np.ndarray,
    mask: np.ndarray,
    previous: Painted | None,
    options: TemporalOptions,
) -> tuple[Painted, float | None]:
    """Stylize ``frame`` (``H×W×3 uint8``) inside/outside ``mask`` (``H×W bool``), blended with
    ``previous`` (module docstring); the :func:`flicker` against it (``None`` on a first frame).
    InputError: a mask of another size than the frame."""
    check_mask(mask, frame.shape[:2], "tracked mask")
    fresh = resize_to(stylizer.stylize(frame, style), frame.shape[:2])
    if previous is None:
        output = composite_regions(frame, [Layer(fresh, mask, options.mode, options.feather_px)])
        return Painted(frame, fresh, output), None
    step = motion(previous.frame, frame)
    carried = warp(previous.painting, step.backward).astype(np.float32)
    weight = (options.blend * step.valid)[..., None]
    mixed = (1.0 - weight) * fresh.astype(np.float32) + weight * carried
    painting = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    output = composite_regions(frame, [Layer(painting, mask, options.mode, options.feather_px)])
    alpha = alpha_from_mask(mask, options.feather_px)
    region = alpha > 0 if options.mode == "object" else alpha < 1  # shows any of the painting
    return Painted(frame, painting, output), flicker(output, previous.output, step, region)


@dataclass(frozen=True)
class Carry:
    """What a chunk hands on: its last input frame, mask (0/255), painting and output PNGs."""

    frame: str
    mask: str
    painting: str
    output: str


def _identity(backend: Any) -> dict[str, Any]:
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
        return [self.path(name) for name in sorted(self.outputs) if name.startswith(f"{kind}_")]

    def carry(self) -> Carry:
        """The :class:`Carry` this chunk hands to the next one."""
        last_mask, last_output = self.paths("mask")[-1], self.paths("output")[-1]
        return Carry(self.last_frame, last_mask, self.path("painting"), last_output)


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
    ``start`` with ``style`` (``h×w×3 uint8``) into ``out_dir``. ConfigError: no frames;
    InputError: unreadable frames, frames of different sizes, a prompt that does not fit."""
    if not frame_paths:
        raise ConfigError(f"chunk at frame {first_index} has no frames; give it at least one")
    out = Path(out_dir)
    frames = [read_rgb(path) for path in frame_paths]
    previous: Painted | None = None
    if isinstance(start, Carry):
        carried = read_rgb(start.frame)
        masks = tracker.track([carried, *frames], read_mask(start.mask))[1:]
        previous = Painted(carried, read_rgb(start.painting), read_rgb(start.output))
    else:
        masks = tracker.track(frames, start)
    outputs: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for index, (frame, mask) in enumerate(zip(frames, masks, strict=True), start=first_index):
        painted, jitter = stylize_frame(stylizer, style, frame, mask, previous, options)
        for name, image in ((f"output_{index:06d}", painted.output), (f"mask_{index:06d}", mask)):
            outputs[name] = str(write_png(out / f"{name}.png", image))
        rows.append({"index": index, "flicker": jitter, "mask_area": int(mask.sum())})
        previous = painted
    outputs["painting"] = str(write_png(out / "painting.png", painted.painting))
    return ChunkRecord(
        outputs=outputs,
        frames=rows,
        last_frame=str(frame_paths[-1]),
        tracker=_identity(tracker),
        stylizer=_identity(stylizer),
    )
