"""How visible a composite's seam is along its mask's edge (:func:`seam_score`). Compare scores
of composites of the same frame: the band's outer pixels also compare the original's texture with
the stylized frame's, and a feathered edge lowers the score only where its ramp is wider than the
band."""

from __future__ import annotations

import cv2
import numpy as np

from segstyle_core.composite import resize_to
from segstyle_core.errors import ConfigError
from segstyle_core.images import check_mask, check_rgb

SEAM_BAND_PX = 2  # default band: pixels up to 2 px from the edge on either side


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """``H×W float32`` gradient magnitude of the Rec. 601 luma of ``image`` (``H×W×3 uint8``):
    3×3 Sobel / 8, so a step of ``s`` grey levels shows as ``s / 2`` on the two pixels by it."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 8.0
    return np.sqrt(gx * gx + gy * gy)


def edge_band(mask: np.ndarray, width: int = SEAM_BAND_PX) -> np.ndarray:
    """``H×W bool``: pixels within ``width`` px (Euclidean, 1 for those touching the edge) of a
    pixel on the other side of ``mask``'s edge (``H×W bool``); empty for an empty or full mask."""
    if width < 1:
        raise ConfigError(f"seam band width={width}: use at least 1 pixel")
    if mask.all() or not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where(mask, inside, outside) <= width


def seam_score(composite: np.ndarray, stylized: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute ``|grad(composite)| - |grad(stylized)|`` over :func:`edge_band` in luma grey
    levels (0: no jump beyond the stylized frame's own, or no edge). ``composite`` ``H×W×3 uint8``,
    ``stylized`` ``h×w×3 uint8`` (its source frame), ``mask`` ``H×W bool``; else InputError."""
    check_rgb(composite, "composite")
    check_rgb(stylized, "stylized image")
    check_mask(mask, composite.shape[:2], "composite's mask")
    band = edge_band(mask)
    if not band.any():
        return 0.0
    stylized = resize_to(stylized, composite.shape[:2])
    difference = np.abs(gradient_magnitude(composite) - gradient_magnitude(stylized))
    return float(difference[band].mean())
