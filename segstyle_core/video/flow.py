"""Dense optical flow (OpenCV's DIS on grey levels), backward warping, and occlusion checks.

Flows are ``H×W×2 float32`` ``(dx, dy)`` pixels: ``flow(a, b)[p]`` takes pixel ``p`` of ``a``
to ``p + flow[p]`` in ``b``, so the current-to-previous flow pulls the previous frame into the
current one (:func:`warp`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segstyle_core.errors import InputError
from segstyle_core.images import check_rgb

#: DIS presets by name: speed against accuracy.
PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def optical_flow(source: np.ndarray, target: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Dense flow from ``source`` to ``target`` (both ``H×W×3 uint8 RGB``): ``H×W×2 float32``
    (InputError: the frames are not RGB or differ in size)."""
    check_rgb(source, "flow source frame")
    check_rgb(target, "flow target frame")
    if source.shape != target.shape:
        raise InputError(
            f"frames of {source.shape[1]}x{source.shape[0]} and {target.shape[1]}x"
            f"{target.shape[0]} px: every frame of a video must have the same size"
        )
    dis = cv2.DISOpticalFlow.create(PRESETS[preset])
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in (source, target)]
    flow = np.zeros((*grey[0].shape, 2), dtype=np.float32)
    return dis.calc(grey[0], grey[1], flow)


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(x, y)`` float32 maps ``p + flow[p]``."""
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``out[p] = image[p + flow[p]]`` (bilinear, edges repeated) for ``H×W[×C]`` arrays of any
    numeric dtype; same shape and dtype back (uint8 rounded)."""
    map_x, map_y = _sample_grid(flow)
    source = image.astype(np.float32)
    out = cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if image.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(image.dtype)


def warp_mask(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Pull an ``H×W bool`` mask along ``flow`` (:func:`warp` of its 0/1 values, kept at >= 0.5)."""
    return warp(mask.astype(np.float32), flow) >= 0.5


@dataclass(frozen=True)
class Motion:
    """How frame ``t-1`` moved to ``t``: the ``backward`` flow (``t`` to ``t-1``, for
    :func:`warp`) and ``valid`` (``H×W bool``: pixels of ``t`` visible in ``t-1``)."""

    backward: np.ndarray
    valid: np.ndarray


def motion(
    previous: np.ndarray, current: np.ndarray, consistency_px: float = 1.0, preset: str = "medium"
) -> Motion:
    """The :class:`Motion` from ``previous`` to ``current`` (both ``H×W×3 uint8 RGB``).

    Forward-backward check (Sundaram et al. 2010): ``p`` is valid when ``p + b(p)`` is inside
    the frame and ``|b(p) + f(p + b(p))| <= consistency_px + 0.05 * (|b(p)| + |f(p + b(p))|)``.
    """
    backward = optical_flow(current, previous, preset)
    forward_there = warp(optical_flow(previous, current, preset), backward)
    error = np.linalg.norm(backward + forward_there, axis=2)
    speed = np.linalg.norm(backward, axis=2) + np.linalg.norm(forward_there, axis=2)
    map_x, map_y = _sample_grid(backward)
    height, width = backward.shape[:2]
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return Motion(backward, inside & (error <= consistency_px + 0.05 * speed))
