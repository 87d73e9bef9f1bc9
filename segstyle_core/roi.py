"""Stylize only a crop around the region the composite paints (margin at least ``feather_px``);
crop buckets (``bucket_px``) let a backend build its kernels once per bucket of shapes."""

from __future__ import annotations

import math

import cv2
import numpy as np

from segstyle_core.composite import Mode, resize_to
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import check_mask, check_rgb
from segstyle_core.stylize.base import ProgressCallback, Stylizer

DEFAULT_MARGIN_PCT = 0.1  # each side of the mask's box grows by 10 % of the box's size
DEFAULT_BUCKET_PX = 0  # off


def roi_box(
    mask: np.ndarray,
    margin_px: int = 0,
    margin_pct: float = DEFAULT_MARGIN_PCT,
    mode: Mode = "object",
) -> tuple[int, int, int, int]:
    """Box ``(x0, y0, x1, y1)`` (ends exclusive) of the painted region of ``mask`` (``H×W
    bool``), each side grown by ``margin_px + margin_pct * (box side)`` (rounded up), clipped."""
    if margin_px < 0 or margin_pct < 0:
        raise ConfigError(f"margin_px={margin_px}, margin_pct={margin_pct}: must be >= 0")
    check_mask(mask, mask.shape[:2])
    region = mask if mode == "object" else ~mask
    if not region.any():
        inside = "selects no pixel" if mode == "object" else "covers the whole image"
        raise InputError(
            f"mask of {mask.shape[1]}x{mask.shape[0]} {inside}; there is no region to "
            f"crop in {mode} mode, use whole-frame stylization or check the segmentation"
        )
    x, y, w, h = cv2.boundingRect(region.astype(np.uint8))
    # round first: 0.1 * 30 is 3.0000000000000004 in floats, which ceil would make 4
    dx, dy = (margin_px + math.ceil(round(margin_pct * side, 6)) for side in (w, h))
    x0, y0 = max(0, x - dx), max(0, y - dy)
    return x0, y0, min(mask.shape[1], x + w + dx), min(mask.shape[0], y + h + dy)


def bucket_box(
    box: tuple[int, int, int, int], shape: tuple[int, ...], bucket_px: int = DEFAULT_BUCKET_PX
) -> tuple[int, int, int, int]:
    """``box`` (XYXY) grown evenly to sides that are multiples of ``bucket_px``, kept within the
    image (``shape`` ``H×W(×3)``); ``bucket_px <= 1``: unchanged."""
    if bucket_px <= 1:
        return box
    start, stop, size = np.array(box[:2]), np.array(box[2:]), np.array([shape[1], shape[0]])
    length = np.minimum(size, -(-(stop - start) // bucket_px) * bucket_px)
    start = np.minimum(np.maximum(0, start - (length - (stop - start)) // 2), size - length)
    x0, y0, x1, y1 = np.concatenate([start, start + length]).tolist()
    return x0, y0, x1, y1


def stylize_roi(
    stylizer: Stylizer,
    content: np.ndarray,
    style: np.ndarray,
    mask: np.ndarray,
    margin_px: int = 0,
    margin_pct: float = DEFAULT_MARGIN_PCT,
    progress: ProgressCallback | None = None,
    mode: Mode = "object",
    bucket_px: int = DEFAULT_BUCKET_PX,
) -> np.ndarray:
    """``content`` (``H×W×3 uint8``) with the :func:`roi_box` of ``mask`` (``H×W bool``)
    stylized like ``style`` (``h×w×3 uint8``; the :func:`bucket_box` stylized, the box pasted)."""
    check_rgb(content, "content image")
    check_mask(mask, content.shape[:2])
    box = roi_box(mask, margin_px, margin_pct, mode)
    x0, y0, x1, y1 = bucket_box(box, content.shape, bucket_px)
    crop = content[y0:y1, x0:x1]
    stylized = resize_to(stylizer.stylize(crop, style, progress), crop.shape[:2])
    bx0, by0, bx1, by1 = box
    result = content.copy()
    result[by0:by1, bx0:bx1] = stylized[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]
    return result
