"""Put a stylized image back into the original, only inside (or only outside) a mask.

Images are ``H×W×3 uint8 RGB``; masks are ``H×W bool`` with True on the selected object.
The stylized image may be at the stylizer's working resolution: it is resized to ``H×W``
first (:func:`resize_to`), as the seed method does.

Guarantees (tested):

* hard edge (``feather_px=0``): object mode leaves every pixel outside the mask bit-identical
  to the original, background mode every pixel inside it;
* feathered edge: only pixels closer than ``feather_px`` to the mask's edge are blended, every
  other pixel is exactly original or exactly stylized (see :func:`alpha_from_mask`);
* colour preservation looks only at the painted region (alpha above 0: inside the mask in
  object mode, outside it in background mode, plus the feathered band), so what lies on the
  other side never changes the painted colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image
from skimage.exposure import match_histograms

from segstyle_core.errors import ConfigError
from segstyle_core.images import check_mask, check_rgb

Mode = Literal["object", "background"]
ColorPreservation = Literal["luminance", "histogram"]

MODES: tuple[str, ...] = ("object", "background")
COLOR_PRESERVATIONS: tuple[str, ...] = ("luminance", "histogram")


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample ``image`` (``h×w×3 uint8``) to ``size = (H, W)`` with Lanczos; returns ``H×W×3``.

    Returns ``image`` itself when it already has that size.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def alpha_from_mask(mask: np.ndarray, feather_px: float = 0.0) -> np.ndarray:
    """Blend weight of the stylized image: ``H×W bool`` mask -> ``H×W float32`` in ``[0, 1]``.

    ``feather_px = 0`` gives the hard edge: exactly ``mask`` as 0/1. Otherwise a linear
    ramp across the edge, ``alpha = clip(0.5 + d / (2 * feather_px), 0, 1)``, where ``d`` is
    the signed Euclidean distance (pixel centres) to the nearest pixel on the other side of
    the edge: ``+d`` inside the mask, ``-d`` outside. So the band is exact: a pixel whose
    distance to the other side is at least ``feather_px`` keeps alpha exactly 1 (inside) or
    exactly 0 (outside), and ``alpha_from_mask(~m) == 1 - alpha_from_mask(m)``.
    """
    if feather_px < 0:
        raise ConfigError(f"feather_px={feather_px}: must be >= 0; use 0 for a hard edge")
    if feather_px == 0 or mask.all() or not mask.any():
        return mask.astype(np.float32)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    signed = inside - outside  # one of the two is 0 at every pixel
    return np.clip(0.5 + signed / (2.0 * feather_px), 0.0, 1.0).astype(np.float32)


def preserve_colors(
    stylized: np.ndarray,
    original: np.ndarray,
    method: ColorPreservation,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """Give ``stylized`` the original's colours; both ``H×W×3 uint8``, returns ``H×W×3 uint8``.

    ``"luminance"``: luma (Y of YCrCb) from ``stylized``, chroma (Cr, Cb) from ``original``,
    so only the painting's light and texture are transferred. Chroma survives exactly up to
    rounding and to clipping of colours that fall outside RGB. Per pixel: no statistic of any
    other pixel enters.
    ``"histogram"``: ``skimage.exposure.match_histograms`` of each stylized channel to the
    original's, both taken over ``region`` only.

    Args:
        region: ``H×W bool``, the pixels that will be painted; ``None``: the whole image.
            Pixels outside it are returned as ``stylized`` has them.
    """
    if method not in COLOR_PRESERVATIONS:
        raise ConfigError(
            f"preserve_color={method!r}: unknown; use one of {COLOR_PRESERVATIONS} or None"
        )
    if region is None:
        region = np.ones(stylized.shape[:2], dtype=bool)
    result = stylized.copy()
    if not region.any():
        return result
    if method == "histogram":
        matched = match_histograms(stylized[region], original[region], channel_axis=-1)
        result[region] = np.clip(np.rint(matched), 0, 255).astype(np.uint8)
        return result
    luma = cv2.cvtColor(stylized.astype(np.float32) / 255.0, cv2.COLOR_RGB2YCrCb)
    chroma = cv2.cvtColor(original.astype(np.float32) / 255.0, cv2.COLOR_RGB2YCrCb)
    chroma[:, :, 0] = luma[:, :, 0]
    rgb = cv2.cvtColor(chroma, cv2.COLOR_YCrCb2RGB)
    result[region] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)[region]
    return result


@dataclass(frozen=True)
class Layer:
    """One stylized region for :func:`composite_regions`.

    Attributes:
        stylized: ``h×w×3 uint8`` stylized image (any size; resized to the original's).
        mask: ``H×W bool`` region at the original's size.
        mode: ``"object"`` paints inside ``mask``, ``"background"`` outside it.
        feather_px: width of the soft edge in pixels (0 = hard edge).
        preserve_color: ``None``, ``"luminance"`` or ``"histogram"`` (see :func:`preserve_colors`).
    """

    stylized: np.ndarray
    mask: np.ndarray
    mode: Mode = "object"
    feather_px: float = 0.0
    preserve_color: ColorPreservation | None = None


def composite_regions(original: np.ndarray, layers: list[Layer]) -> np.ndarray:
    """Paint several stylized regions onto ``original`` (``H×W×3 uint8``); returns ``H×W×3 uint8``.

    Overlap rule: layers are alpha-composited over the running result in list order, so a
    later layer covers earlier ones where their regions overlap (order the list by priority,
    lowest first). Where every layer's alpha is 0 the output is bit-identical to ``original``.
    """
    check_rgb(original, "original image")
    size = original.shape[:2]
    result = original.astype(np.float32)
    for index, layer in enumerate(layers):
        check_rgb(layer.stylized, f"stylized image of layer {index}")
        check_mask(layer.mask, size, f"mask of layer {index}")
        if layer.mode not in MODES:
            raise ConfigError(f"mode={layer.mode!r}: unknown; use one of {MODES}")
        stylized = resize_to(layer.stylized, size)
        alpha = alpha_from_mask(layer.mask, layer.feather_px)
        if layer.mode == "background":
            alpha = 1.0 - alpha
        if layer.preserve_color is not None:  # over the painted region only
            stylized = preserve_colors(stylized, original, layer.preserve_color, alpha > 0)
        alpha = alpha[:, :, None]
        result = result * (1.0 - alpha) + stylized.astype(np.float32) * alpha
    return np.rint(result).astype(np.uint8)


def composite(
    original: np.ndarray,
    stylized: np.ndarray,
    mask: np.ndarray,
    mode: Mode = "object",
    feather_px: float = 0.0,
    preserve_color: ColorPreservation | None = None,
) -> np.ndarray:
    """Stylized inside ``mask`` (object mode) or outside it (background mode), original elsewhere.

    Args:
        original: ``H×W×3 uint8 RGB``.
        stylized: ``h×w×3 uint8 RGB`` at any size (resized to ``H×W`` with :func:`resize_to`).
        mask: ``H×W bool``; a mask of another size raises :class:`InputError`.
        mode: ``"object"`` or ``"background"``.
        feather_px: soft-edge width in pixels (0 = hard edge, see :func:`alpha_from_mask`).
        preserve_color: ``None``, ``"luminance"`` or ``"histogram"``.

    Returns:
        ``H×W×3 uint8 RGB``.
    """
    layer = Layer(stylized, mask, mode, feather_px, preserve_color)
    return composite_regions(original, [layer])
