"""Dense optical flow between consecutive frames, backward warping, and occlusion checks.

Flows are ``H×W×2 float32`` displacement fields ``(dx, dy)`` in pixels. ``flow(a, b)`` maps
each pixel ``p`` of frame ``a`` to its match ``p + flow[p]`` in frame ``b``; so the flow from
the *current* frame to the *previous* one pulls anything drawn on the previous frame into the
current one (:func:`warp`). OpenCV's DIS optical flow (Kroeger et al. 2016) computes it on the
frames' grey levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import check_rgb

#: DIS presets by name: speed against accuracy.
PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def optical_flow(source: np.ndarray, target: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Dense flow from ``source`` to ``target`` (both ``H×W×3 uint8 RGB``): ``H×W×2 float32``.

    Raises:
        InputError: the frames are not RGB or differ in size.
        ConfigError: unknown ``preset`` (see :data:`PRESETS`).
    """
    check_rgb(source, "flow source frame")
    check_rgb(target, "flow target frame")
    if source.shape != target.shape:
        raise InputError(
            f"frames of {source.shape[1]}x{source.shape[0]} and {target.shape[1]}x"
            f"{target.shape[0]} px: every frame of a video must have the same size"
        )
    if preset not in PRESETS:
        raise ConfigError(f"flow preset {preset!r}: use one of {', '.join(PRESETS)}")
    dis = cv2.DISOpticalFlow.create(PRESETS[preset])
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in (source, target)]
    flow = np.zeros((*grey[0].shape, 2), dtype=np.float32)
    return dis.calc(grey[0], grey[1], flow)


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(x, y)`` float32 maps ``p + flow[p]`` that :func:`cv2.remap` samples at."""
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Pull ``image`` (of the flow's target frame) into the flow's source frame.

    ``out[p] = image[p + flow[p]]``, bilinear, edge pixels repeated outside the frame. Works for
    ``H×W×C`` and ``H×W`` arrays of any numeric dtype (uint8 is rounded back to uint8);
    returns the same shape and dtype.
    """
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
    """How frame ``t-1`` moved to frame ``t``.

    Attributes:
        backward: flow from frame ``t`` to frame ``t-1`` (``H×W×2 float32``): :func:`warp` with it
            brings anything of frame ``t-1`` into frame ``t``.
        valid: ``H×W bool``: pixels of frame ``t`` that were visible in frame ``t-1`` (inside the
            frame there, and forward and backward flow agree to within the consistency limit).
    """

    backward: np.ndarray
    valid: np.ndarray


def motion(
    previous: np.ndarray, current: np.ndarray, consistency_px: float = 1.0, preset: str = "medium"
) -> Motion:
    """The :class:`Motion` from ``previous`` to ``current`` (both ``H×W×3 uint8 RGB``).

    Occlusion test (forward-backward consistency, Sundaram et al. 2010): a pixel ``p`` of
    ``current`` is valid when ``|b(p) + f(p + b(p))| <= consistency_px + 0.05 * (|b(p)| +
    |f(p + b(p))|)``, with ``b`` the backward and ``f`` the forward flow, and ``p + b(p)`` lies
    inside the frame.

    Raises:
        ConfigError: ``consistency_px`` not positive.
    """
    if consistency_px <= 0:
        raise ConfigError(f"consistency_px={consistency_px}: must be > 0")
    backward = optical_flow(current, previous, preset)
    forward_there = warp(optical_flow(previous, current, preset), backward)
    error = np.linalg.norm(backward + forward_there, axis=2)
    speed = np.linalg.norm(backward, axis=2) + np.linalg.norm(forward_there, axis=2)
    map_x, map_y = _sample_grid(backward)
    height, width = backward.shape[:2]
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return Motion(backward, inside & (error <= consistency_px + 0.05 * speed))
