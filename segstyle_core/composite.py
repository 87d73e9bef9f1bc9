"""Put a stylized image back into the original, only inside (or only outside) a mask. Images
are ``H×W×3 uint8 RGB`` (the stylized one resized to ``H×W`` first), masks ``H×W bool``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np
from PIL import Image
from skimage.exposure import match_histograms

from segstyle_core.errors import ConfigError
from segstyle_core.images import check_mask, check_rgb

Mode = Literal["object", "background"]
ColorPreservation = Literal["luminance", "histogram"]


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (``h×w×3 uint8``) Lanczos-resampled to ``size = (H, W)`` (itself if it fits)."""
    if image.shape[:2] == size:
        return image
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def alpha_from_mask(mask: np.ndarray, feather_px: float = 0.0) -> np.ndarray:
    """``H×W float32`` stylized-image weight: ``mask`` (``H×W bool``) as 0/1, or if ``feather_px``
    > 0 ``clip(0.5 + d / (2 * feather_px), 0, 1)``, ``d`` the px to the edge (+ inside)."""
    if feather_px < 0:
        raise ConfigError(f"feather_px={feather_px}: must be >= 0; use 0 for a hard edge")
    if feather_px == 0 or mask.all() or not mask.any():
        return mask.astype(np.float32)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    signed = inside - outside  # one of the two is 0 at every pixel
    return np.clip(0.5 + signed / (2.0 * feather_px), 0.0, 1.0).astype(np.float32)


def preserve_colors(
    stylized: np.ndarray, original: np.ndarray, method: ColorPreservation, region: np.ndarray
) -> np.ndarray:
    """``stylized`` with the original's colours over ``region`` (``H×W bool``): ``luminance`` keeps
    its luma (Y of YCrCb) with the original's chroma; ``histogram`` matches channel histograms."""
    if method not in get_args(ColorPreservation):
        raise ConfigError(
            f"preserve_color={method!r}: unknown; use one of {get_args(ColorPreservation)} or None"
        )
    result = stylized.copy()
    if method == "histogram" and region.any():  # match_histograms needs a pixel
        matched = match_histograms(stylized[region], original[region], channel_axis=-1)
        result[region] = np.clip(np.rint(matched), 0, 255).astype(np.uint8)
    elif method == "luminance":
        luma = cv2.cvtColor(stylized.astype(np.float32) / 255.0, cv2.COLOR_RGB2YCrCb)
        chroma = cv2.cvtColor(original.astype(np.float32) / 255.0, cv2.COLOR_RGB2YCrCb)
        chroma[:, :, 0] = luma[:, :, 0]
        rgb = cv2.cvtColor(chroma, cv2.COLOR_YCrCb2RGB)
        result[region] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)[region]
    return result


@dataclass(frozen=True)
class Layer:
    """``stylized`` (``h×w×3 uint8``, any size) painted inside (``object``) or outside its
    ``H×W bool`` ``mask``."""

    stylized: np.ndarray
    mask: np.ndarray
    mode: Mode = "object"
    feather_px: float = 0.0
    preserve_color: ColorPreservation | None = None


def composite_regions(original: np.ndarray, layers: list[Layer]) -> np.ndarray:
    """Alpha-composite ``layers`` over ``original`` in order (a later layer covers earlier
    ones); where every alpha is 0 the output is bit-identical to ``original``."""
    check_rgb(original, "original image")
    size = original.shape[:2]
    result = original.astype(np.float32)
    for index, layer in enumerate(layers):
        check_rgb(layer.stylized, f"stylized image of layer {index}")
        check_mask(layer.mask, size, f"mask of layer {index}")
        if layer.mode not in get_args(Mode):
            raise ConfigError(f"mode={layer.mode!r}: unknown; use one of {get_args(Mode)}")
        stylized = resize_to(layer.stylized, size)
        alpha = alpha_from_mask(layer.mask, layer.feather_px)
        if layer.mode == "background":
            alpha = 1.0 - alpha
        if layer.preserve_color is not None:  # over the painted region only
            stylized = preserve_colors(stylized, original, layer.preserve_color, alpha > 0)
        result = result * (1.0 - alpha[..., None]) + stylized.astype(np.float32) * alpha[..., None]
    return np.rint(result).astype(np.uint8)
