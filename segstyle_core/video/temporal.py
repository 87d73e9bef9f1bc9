"""Temporally stable stylization of a tracked object, and the flicker it leaves.

A stylizer run on each frame alone paints every frame a little differently (brush strokes
jump, colours shimmer), even where nothing moved. Here each frame's fresh painting is blended
with the previous frame's painting carried into it along the optical flow (Ruder et al. 2016,
"Artistic style transfer for videos", without the optimisation)::

    painting_t = (1 - w) * stylize(frame_t) + w * warp(painting_{t-1}),   w = blend * valid

where ``valid`` drops pixels hidden in the previous frame (forward-backward flow check, see
:func:`segstyle_core.video.flow.motion`), so uncovered background is painted fresh rather than
smeared. The painting is then composited into the frame through the object's mask
(:func:`segstyle_core.composite.composite`). Paintings are whole frames, so the same works in
background mode.

Flicker (:func:`flicker`): the mean absolute difference, in grey levels ``0..255`` averaged over
the colour channels, between output frame ``t`` and output frame ``t-1`` carried into frame
``t`` along the flow, over the stylized region of frame ``t`` (inside the mask in object mode,
outside it in background mode) where the flow is valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segstyle_core.composite import MODES, Mode, alpha_from_mask, composite, resize_to
from segstyle_core.errors import ConfigError
from segstyle_core.images import check_mask
from segstyle_core.stylize.base import Stylizer
from segstyle_core.video.flow import Motion, motion, warp


@dataclass(frozen=True)
class TemporalOptions:
    """Settings of :func:`stylize_frame`.

    Attributes:
        blend: weight ``0..1`` of the previous painting carried along the flow (0: every frame
            stylized on its own).
        consistency_px: forward-backward flow disagreement (pixels) above which a pixel counts
            as hidden in the previous frame.
        mode: ``"object"`` (stylize inside the mask) or ``"background"`` (outside it).
        feather_px: soft mask edge in pixels (0: hard edge).
        flow_preset: DIS optical flow preset (:data:`segstyle_core.video.flow.PRESETS`).
    """

    blend: float = 0.6
    consistency_px: float = 1.0
    mode: Mode = "object"
    feather_px: float = 0.0
    flow_preset: str = "medium"

    def __post_init__(self) -> None:
        if not 0.0 <= self.blend < 1.0:
            raise ConfigError(f"blend={self.blend}: must be in 0..1 (1 would never update)")
        if self.mode not in MODES:
            raise ConfigError(f"mode={self.mode!r}: use one of {', '.join(MODES)}")
        if self.feather_px < 0:
            raise ConfigError(f"feather_px={self.feather_px}: must be >= 0")


@dataclass(frozen=True)
class Previous:
    """What frame ``t-1`` left for frame ``t``; all ``H×W×3 uint8 RGB`` at the frame size.

    Attributes:
        frame: the input frame ``t-1``.
        painting: its (blended) painting, before compositing.
        output: its composited output frame.
    """

    frame: np.ndarray
    painting: np.ndarray
    output: np.ndarray


@dataclass(frozen=True)
class StylizedFrame:
    """One result of :func:`stylize_frame`.

    Attributes:
        output: the composited frame, ``H×W×3 uint8 RGB``.
        painting: the blended painting, ``H×W×3 uint8 RGB`` (feeds the next frame).
        flicker: :func:`flicker` against the previous output (``None`` on a first frame, or when
            no stylized pixel has valid flow).
    """

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
    """Mean absolute difference between ``output`` and ``previous_output`` carried along
    ``step`` (both ``H×W×3 uint8``), over ``region & step.valid`` (``H×W bool``).

    Returns grey levels ``0..255`` averaged over the three channels, or ``None`` when that
    region is empty.
    """
    where = region & step.valid
    if not where.any():
        return None
    carried = warp(previous_output, step.backward).astype(np.float32)
    return float(np.abs(output.astype(np.float32) - carried)[where].mean())


def _composite(
    frame: np.ndarray, painting: np.ndarray, mask: np.ndarray, options: TemporalOptions
) -> np.ndarray:
    return composite(frame, painting, mask, options.mode, options.feather_px)


def stylize_frame(
    stylizer: Stylizer,
    style: np.ndarray,
    frame: np.ndarray,
    mask: np.ndarray,
    previous: Previous | None,
    options: TemporalOptions,
) -> StylizedFrame:
    """Stylize ``frame`` (``H×W×3 uint8 RGB``) inside/outside ``mask`` (``H×W bool``), blended
    with the previous frame's painting as described in the module docstring.

    Raises:
        InputError: a mask of another size than the frame.
    """
    check_mask(mask, frame.shape[:2], "tracked mask")
    fresh = resize_to(stylizer.stylize(frame, style), frame.shape[:2])
    if previous is None:
        return StylizedFrame(_composite(frame, fresh, mask, options), fresh, None)
    step = motion(previous.frame, frame, options.consistency_px, options.flow_preset)
    carried = warp(previous.painting, step.backward).astype(np.float32)
    weight = (options.blend * step.valid)[..., None]
    mixed = (1.0 - weight) * fresh.astype(np.float32) + weight * carried
    painting = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    output = _composite(frame, painting, mask, options)
    region = stylized_region(mask, options.mode, options.feather_px)
    return StylizedFrame(output, painting, flicker(output, previous.output, step, region))
