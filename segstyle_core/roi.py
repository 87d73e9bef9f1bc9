"""Region-of-interest stylization: stylize only a crop around the painted region.

Whole-frame stylization (the seed method) stays the default; the caller chooses ROI mode. The
result has the same format as whole-frame stylization, a full-size ``H×W×3 uint8`` image
(stylized inside the box, the original outside it), so
:func:`segstyle_core.composite.composite` works on it unchanged. The box is that of the region
the composite paints: the mask in object mode, everything outside the mask in background mode
(so background mode stylizes, in practice, the whole frame: an ROI saves time only in object
mode, but it never leaves part of the background unpainted). Keep the margin at least as wide
as the composite's ``feather_px`` so the soft edge blends into stylized pixels.

Crop buckets (``bucket_px``, off by default): the stylizer sees the box grown to the next
multiple of ``bucket_px`` on each side, the extra pixels taken from the image around it (never
padding), so that a backend that builds kernels per input shape (cuDNN autotuning, a compiled
graph) builds them once per bucket, not once per frame. Only the real box is pasted back: the
composite, the seam and the objective are those of the real crop. Off by default because on the
CPUs measured new crop shapes cost no measurable time, while the larger crops moved the seam
measure up (``benchmarks/README.md``, issue #25).

An empty region has no box: :func:`roi_box` and :func:`stylize_roi` raise
:class:`~segstyle_core.errors.InputError` rather than return an unstylized image that a
composite would silently use.
"""

from __future__ import annotations

import math

import numpy as np

from segstyle_core.composite import MODES, Mode, resize_to
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import check_mask, check_rgb
from segstyle_core.stylize.base import ProgressCallback, Stylizer

#: Default context margin: each side of the mask's box grows by 10 % of the box's size.
DEFAULT_MARGIN_PCT = 0.1
#: Default crop bucket (0: off); see the module doc.
DEFAULT_BUCKET_PX = 0


def _ceil_px(length: float) -> int:
    """Round a length up to whole pixels, ignoring float noise (``0.1 * 30`` is 3, not 4)."""
    return math.ceil(round(length, 6))


def roi_box(
    mask: np.ndarray,
    margin_px: int = 0,
    margin_pct: float = DEFAULT_MARGIN_PCT,
    mode: Mode = "object",
) -> tuple[int, int, int, int]:
    """Bounding box of the painted region grown by a context margin, clipped to the image.

    The painted region is ``mask`` (``H×W bool``) in ``object`` mode and ``~mask`` in
    ``background`` mode. Each side grows by ``margin_px + margin_pct * (box width or height)``
    pixels (rounded up). Returns ``(x0, y0, x1, y1)`` XYXY in image pixels, ``x1``/``y1``
    exclusive, so ``image[y0:y1, x0:x1]`` is the crop.
    """
    if margin_px < 0 or margin_pct < 0:
        raise ConfigError(f"margin_px={margin_px}, margin_pct={margin_pct}: must be >= 0")
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: unknown; use one of {MODES}")
    check_mask(mask, mask.shape[:2])
    region = mask if mode == "object" else ~mask
    if not region.any():
        inside = "selects no pixel" if mode == "object" else "covers the whole image"
        raise InputError(
            f"mask of {mask.shape[1]}x{mask.shape[0]} {inside}; there is no region to "
            f"crop in {mode} mode, use whole-frame stylization or check the segmentation"
        )
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    grow_x = margin_px + _ceil_px(margin_pct * (x1 - x0))
    grow_y = margin_px + _ceil_px(margin_pct * (y1 - y0))
    height, width = mask.shape
    return (
        max(0, x0 - grow_x),
        max(0, y0 - grow_y),
        min(width, x1 + grow_x),
        min(height, y1 + grow_y),
    )


def _bucket_span(start: int, stop: int, size: int, bucket: int) -> tuple[int, int]:
    """``[start, stop)`` grown to the next multiple of ``bucket`` (at most ``size``), the extra
    split over both ends and shifted to stay within ``[0, size)``."""
    length = min(size, -(-(stop - start) // bucket) * bucket)
    start = min(max(0, start - (length - (stop - start)) // 2), size - length)
    return start, start + length


def bucket_box(
    box: tuple[int, int, int, int], shape: tuple[int, ...], bucket_px: int = DEFAULT_BUCKET_PX
) -> tuple[int, int, int, int]:
    """``box`` (XYXY, exclusive ends) grown so that its width and height are multiples of
    ``bucket_px`` (or the image's width/height where it is smaller), inside an image of shape
    ``H×W(×3)``; it contains ``box``. ``bucket_px <= 1``: ``box`` unchanged."""
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
    """Stylize the crop :func:`roi_box` gives, grown to :func:`bucket_box`, and paste the box
    of :func:`roi_box` back into a copy of ``content``.

    Args:
        stylizer: any :class:`~segstyle_core.stylize.base.Stylizer`; it sees only the crop.
        content: ``H×W×3 uint8 RGB``.
        style: ``h×w×3 uint8 RGB``.
        mask: ``H×W bool``; the painted region (``mask``, or ``~mask`` in background mode)
            must be non-empty.
        margin_px, margin_pct: context margin around the region's box (see :func:`roi_box`).
        progress: passed to ``stylizer.stylize``.
        mode: the composite's mode: ``object`` crops around the mask, ``background`` around
            everything outside it.
        bucket_px: the stylized crop's sides are multiples of this (0: the box itself).

    Returns:
        ``H×W×3 uint8 RGB``: the stylized crop (resized back to the bucket's size) inside the
        box of :func:`roi_box`, ``content`` bit-identical outside it.
    """
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
