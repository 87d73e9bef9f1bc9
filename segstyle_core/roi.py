"""Stylize only a crop around the region the composite paints (the mask in object mode,
everything outside it in background mode; keep the margin at least the ``feather_px``).

Crop buckets (``bucket_px``, off by default: no gain measured on CPUs) let a backend that builds
kernels per input shape build them once per bucket.
"""

from __future__ import annotations

import math

import numpy as np

from segstyle_core.composite import Mode, resize_to
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import check_mask, check_rgb
from segstyle_core.stylize.base import ProgressCallback, Stylizer

DEFAULT_MARGIN_PCT = 0.1  # each side of the mask's box grows by 10 % of the box's size
DEFAULT_BUCKET_PX = 0  # off


def _grown_span(hits: np.ndarray, margin_px: int, margin_pct: float, size: int) -> tuple[int, int]:
    """``[first hit, last hit + 1)`` grown at both ends by the margin, clipped to ``[0, size)``."""
    start, stop = int(hits[0]), int(hits[-1]) + 1
    grow = margin_px + math.ceil(round(margin_pct * (stop - start), 6))  # 0.1 * 30 is 3, not 4
    return max(0, start - grow), min(size, stop + grow)


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
    height, width = mask.shape
    x0, x1 = _grown_span(np.flatnonzero(region.any(axis=0)), margin_px, margin_pct, width)
    y0, y1 = _grown_span(np.flatnonzero(region.any(axis=1)), margin_px, margin_pct, height)
    return x0, y0, x1, y1


def _bucket_span(start: int, stop: int, size: int, bucket: int) -> tuple[int, int]:
    """``[start, stop)`` grown to the next multiple of ``bucket`` (at most ``size``), the extra
    split over both ends and shifted to stay within ``[0, size)``."""
    length = min(size, -(-(stop - start) // bucket) * bucket)
    start = min(max(0, start - (length - (stop - start)) // 2), size - length)
    return start, start + length


def bucket_box(
    box: tuple[int, int, int, int], shape: tuple[int, ...], bucket_px: int = DEFAULT_BUCKET_PX
) -> tuple[int, int, int, int]:
    """``box`` (XYXY) grown to sides that are multiples of ``bucket_px`` (at most the image's,
    of shape ``H×W(×3)``); ``bucket_px <= 1``: ``box`` unchanged."""
    if bucket_px <= 1:
        return box
    x0, y0, x1, y1 = box
    x0, x1 = _bucket_span(x0, x1, shape[1], bucket_px)
    y0, y1 = _bucket_span(y0, y1, shape[0], bucket_px)
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
