"""Seam measure of a composite (segstyle_core.seams)."""

from __future__ import annotations

import numpy as np
import pytest

from segstyle_core.errors import ConfigError, InputError
from segstyle_core.seams import edge_band, gradient_magnitude, seam_score
from tests.test_composite import composite


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured original, a brighter, differently textured 'stylized' frame and a disk mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    original = np.stack([40 + xx // 2, 60 + yy // 2, 80 + (xx + yy) // 4], axis=-1)
    original = original + rng.integers(0, 6, original.shape)
    stylized = 150 + 40 * np.sin(xx / 5.0)[..., None] + rng.integers(0, 6, original.shape)
    mask = (yy - 48) ** 2 + (xx - 64) ** 2 < 30**2
    return original.astype(np.uint8), np.clip(stylized, 0, 255).astype(np.uint8), mask


def test_hard_seam_scores_higher_than_feathered() -> None:
    original, stylized, mask = _scene()
    hard = seam_score(composite(original, stylized, mask), stylized, mask)
    feathered = seam_score(composite(original, stylized, mask, feather_px=6), stylized, mask)
    assert hard > 1.5 * feathered > 0


def test_no_seam_scores_zero() -> None:
    original, stylized, mask = _scene()
    assert seam_score(stylized, stylized, mask) == 0.0  # the composite is the stylized frame
    same = composite(original, original, mask)  # nothing changes at the edge
    assert seam_score(same, original, mask) == 0.0
    assert seam_score(original, stylized, np.zeros_like(mask)) == 0.0  # no edge, no band


def test_stylized_frame_is_resized_like_the_composite() -> None:
    original, stylized, mask = _scene()
    small = stylized[::2, ::2]
    result = composite(original, small, mask)
    assert seam_score(result, small, mask) > 0


def test_edge_band_is_width_pixels_on_each_side() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[:, :10] = True
    band = edge_band(mask, width=2)
    assert band[0].tolist() == [False] * 8 + [True] * 4 + [False] * 8
    assert band.all(axis=0).sum() == 4
    with pytest.raises(ConfigError, match="at least 1"):
        edge_band(mask, width=0)


def test_gradient_of_a_step_is_half_the_step_on_each_side() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, 4:] = 100
    magnitude = gradient_magnitude(image)
    np.testing.assert_allclose(magnitude[4, [3, 4]], 50.0, rtol=1e-4)
    assert magnitude[4, [0, 1, 2, 5, 6, 7]].max() == 0


def test_bad_inputs_raise() -> None:
    original, stylized, mask = _scene()
    with pytest.raises(InputError, match="composite's mask"):
        seam_score(original, stylized, mask[:-1])
    with pytest.raises(InputError):
        seam_score(original[..., 0], stylized, mask)
