"""Temporally stable stylization of a tracked object, and the flicker it leaves.

Painted alone, every frame differs a little (strokes jump, colours shimmer). So each fresh
painting is blended with the previous one carried along the optical flow (Ruder et al. 2016,
without the optimisation), then composited through the mask::

    painting_t = (1 - w) * stylize(frame_t) + w * warp(painting_{t-1}),   w = blend * valid

``valid`` drops pixels hidden in the previous frame (:func:`segstyle_core.video.flow.motion`),
so uncovered background is painted fresh rather than smeared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segstyle_core.composite import Mode, alpha_from_mask, composite, resize_to
from segstyle_core.images import check_mask
from segstyle_core.stylize.base import Stylizer
from segstyle_core.video.flow import Motion, motion, warp


@dataclass(frozen=True)
class TemporalOptions:
    """Settings of :func:`stylize_frame`: ``blend`` (``w`` above), ``consistency_px`` (flow
    disagreement above which a pixel was hidden), the composite's ``mode`` and ``feather_px``,
    and the DIS ``flow_preset``."""

    blend: float = 0.6
    consistency_px: float = 1.0
    mode: Mode = "object"
    feather_px: float = 0.0
    flow_preset: str = "medium"


@dataclass(frozen=True)
class Previous:
    """Frame ``t-1``'s input, blended painting and output, ``H×W×3 uint8 RGB``."""

    frame: np.ndarray
    painting: np.ndarray
    output: np.ndarray


@dataclass(frozen=True)
class StylizedFrame:
    """The composited ``output`` and blended ``painting`` (``H×W×3 uint8``), and the
    :func:`flicker` against the previous output (``None`` on a first frame or without flow)."""

    output: np.ndarray
    painting: np.ndarray
    flicker: float | None


def stylized_region(mask: np.ndarray, mode: Mode, feather_px: float = 0.0) -> np.ndarray:
    """``H×W bool``: where the output shows any of the painting (alpha > 0) for this mask."""
    alpha = alpha_from_mask(mask, feather_px)
    return alpha > 0 if mode == "object" else alpha < 1


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
    previous: Previous | None,
    options: TemporalOptions,
) -> StylizedFrame:
    """Stylize ``frame`` (``H×W×3 uint8``) inside/outside ``mask`` (``H×W bool``), blended
    with the previous frame's painting (module docstring).

    Raises:
        InputError: a mask of another size than the frame.
    """
    check_mask(mask, frame.shape[:2], "tracked mask")
    fresh = resize_to(stylizer.stylize(frame, style), frame.shape[:2])
    if previous is None:
        return StylizedFrame(
            composite(frame, fresh, mask, options.mode, options.feather_px), fresh, None
        )
    step = motion(previous.frame, frame, options.consistency_px, options.flow_preset)
    carried = warp(previous.painting, step.backward).astype(np.float32)
    weight = (options.blend * step.valid)[..., None]
    mixed = (1.0 - weight) * fresh.astype(np.float32) + weight * carried
    painting = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    output = composite(frame, painting, mask, options.mode, options.feather_px)
    region = stylized_region(mask, options.mode, options.feather_px)
    return StylizedFrame(output, painting, flicker(output, previous.output, step, region))
