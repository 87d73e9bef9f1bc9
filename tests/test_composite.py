"""Compositing: hard and feathered edges, both modes, overlap rule, colour preservation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from segstyle_core.composite import (
    ColorPreservation,
    Layer,
    Mode,
    alpha_from_mask,
    composite_regions,
    resize_to,
)
from segstyle_core.errors import ConfigError, InputError

H, W = 48, 64


def composite(
    original: np.ndarray,
    stylized: np.ndarray,
    mask: np.ndarray,
    mode: Mode = "object",
    feather_px: float = 0.0,
    preserve_color: ColorPreservation | None = None,
) -> np.ndarray:
    """One :class:`Layer` composited over ``original``."""
    return composite_regions(original, [Layer(stylized, mask, mode, feather_px, preserve_color)])


@pytest.fixture()
def original() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture()
def stylized() -> np.ndarray:
    """Smaller than the original, as a stylizer's working resolution would be."""
    return np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)


@pytest.fixture()
def mask() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return ((yy - 24) / 14.0) ** 2 + ((xx - 30) / 20.0) ** 2 <= 1.0


def test_resize_to_gives_requested_size(stylized: np.ndarray) -> None:
    out = resize_to(stylized, (H, W))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert resize_to(out, (H, W)) is out


@pytest.mark.parametrize("mode", ["object", "background"])
def test_hard_edge_keeps_the_other_side_bit_identical(
    original: np.ndarray, stylized: np.ndarray, mask: np.ndarray, mode: Mode
) -> None:
    out = composite(original, stylized, mask, mode=mode)
    painted = mask if mode == "object" else ~mask
    assert out.shape == original.shape and out.dtype == np.uint8
    assert np.array_equal(out[~painted], original[~painted])
    assert np.array_equal(out[painted], resize_to(stylized, (H, W))[painted])


@pytest.mark.parametrize("mode", ["object", "background"])
@pytest.mark.parametrize("feather", [3.0, 6.5])
def test_feathering_changes_only_a_band_of_the_given_width(
    original: np.ndarray, stylized: np.ndarray, mask: np.ndarray, mode: Mode, feather: float
) -> None:
    out = composite(original, stylized, mask, mode=mode, feather_px=feather)
    full = resize_to(stylized, (H, W))
    painted = mask if mode == "object" else ~mask
    # Distance (pixel centres) to the nearest pixel on the other side of the edge.
    to_other_side = np.where(mask, distance_transform_edt(mask), distance_transform_edt(~mask))
    far = to_other_side >= feather
    assert np.array_equal(out[far & ~painted], original[far & ~painted])
    assert np.array_equal(out[far & painted], full[far & painted])
    band = ~far
    blended = (out[band] != original[band]).any(axis=1) & (out[band] != full[band]).any(axis=1)
    assert blended.mean() > 0.5  # inside the band, pixels are mixtures of both


def test_alpha_is_symmetric_and_hard_at_zero(mask: np.ndarray) -> None:
    assert np.array_equal(alpha_from_mask(mask, 0), mask.astype(np.float32))
    soft = alpha_from_mask(mask, 4.0)
    assert soft.dtype == np.float32 and soft.min() == 0.0 and soft.max() == 1.0
    assert np.allclose(alpha_from_mask(~mask, 4.0), 1.0 - soft)
    assert np.all(soft[mask] > 0.5) and np.all(soft[~mask] < 0.5)


def test_mask_of_wrong_size_is_an_input_error(original: np.ndarray, stylized: np.ndarray) -> None:
    with pytest.raises(InputError, match=r"mask is 32x16 \(WxH\) but the image is 64x48"):
        composite(original, stylized, np.zeros((16, 32), bool))
    with pytest.raises(InputError, match="bool"):
        composite(original, stylized, np.zeros((H, W), np.uint8))


def test_bad_options_are_config_errors(
    original: np.ndarray, stylized: np.ndarray, mask: np.ndarray
) -> None:
    with pytest.raises(ConfigError, match="mode"):
        composite(original, stylized, mask, mode="inside")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="feather_px"):
        composite(original, stylized, mask, feather_px=-1)
    with pytest.raises(ConfigError, match="preserve_color"):
        composite(original, stylized, mask, preserve_color="hue")  # type: ignore[arg-type]


def test_later_layers_are_painted_over_earlier_ones(original: np.ndarray) -> None:
    red = np.full((H, W, 3), (255, 0, 0), np.uint8)
    blue = np.full((20, 20, 3), (0, 0, 255), np.uint8)
    left = np.zeros((H, W), bool)
    left[:, :40] = True
    right = np.zeros((H, W), bool)
    right[:, 24:] = True
    out = composite_regions(original, [Layer(red, left), Layer(blue, right)])
    assert np.all(out[:, :24] == (255, 0, 0))
    assert np.all(out[:, 24:] == (0, 0, 255))  # overlap 24..39 goes to the later layer
    swapped = composite_regions(original, [Layer(blue, right), Layer(red, left)])
    assert np.all(swapped[:, :40] == (255, 0, 0))
    assert np.all(swapped[:, 40:] == (0, 0, 255))
    top = np.zeros((H, W), bool)
    top[:10] = True
    partial = composite_regions(original, [Layer(red, top & left)])
    assert np.array_equal(partial[10:], original[10:])
    assert np.array_equal(composite_regions(original, []), original)


def test_luminance_preservation_keeps_the_original_chroma() -> None:
    rng = np.random.default_rng(3)
    original = rng.integers(70, 186, (H, W, 3), dtype=np.uint8)
    stylized = rng.integers(70, 186, (H, W, 3), dtype=np.uint8)
    everything = np.ones((H, W), bool)
    out = composite(original, stylized, everything, preserve_color="luminance")
    out_ycc, orig_ycc, styl_ycc = (
        cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb).astype(int) for image in (out, original, stylized)
    )
    assert np.abs(out_ycc[:, :, 1:] - orig_ycc[:, :, 1:]).max() <= 1
    assert np.abs(out_ycc[:, :, 0] - styl_ycc[:, :, 0]).max() <= 1
    assert not np.array_equal(out, stylized)


def test_histogram_preservation_matches_the_original_colour_statistics() -> None:
    rng = np.random.default_rng(4)
    original = rng.normal((180, 90, 40), 20, (H, W, 3)).clip(0, 255).astype(np.uint8)
    stylized = rng.normal((40, 90, 200), 35, (H, W, 3)).clip(0, 255).astype(np.uint8)
    everything = np.ones((H, W), bool)
    out = composite(original, stylized, everything, preserve_color="histogram")
    quantiles = [10, 25, 50, 75, 90]
    for channel in range(3):
        matched = np.percentile(out[:, :, channel], quantiles)
        target = np.percentile(original[:, :, channel], quantiles)
        assert np.abs(matched - target).max() <= 3
    # The stylized image's structure (its rank order) survives the matching.
    order = np.corrcoef(out[:, :, 0].ravel(), stylized[:, :, 0].ravel())[0, 1]
    assert order > 0.9


# --- issue #15.9: colour preservation looks only at the painted region ---------------------


def _two_tone(mask: np.ndarray) -> np.ndarray:
    """An original that is reddish inside ``mask`` and bluish outside it (with noise)."""
    rng = np.random.default_rng(6)
    red = rng.normal((200, 60, 50), 12, (H, W, 3))
    blue = rng.normal((40, 70, 210), 12, (H, W, 3))
    return np.where(mask[:, :, None], red, blue).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["object", "background"])
@pytest.mark.parametrize("method", ["histogram", "luminance"])
@pytest.mark.parametrize("feather", [0.0, 3.0])
def test_colour_preservation_ignores_the_side_that_is_not_painted(
    stylized: np.ndarray, mask: np.ndarray, mode: Mode, method: str, feather: float
) -> None:
    original = _two_tone(mask)
    out = composite(original, stylized, mask, mode, feather, method)  # type: ignore[arg-type]
    # the kept side changes arbitrarily (beyond the feathered band): the painting does not
    alpha = alpha_from_mask(mask, feather)
    kept = (alpha if mode == "background" else 1.0 - alpha) == 1.0
    changed = original.copy()
    changed[kept] = 255 - changed[kept]
    again = composite(changed, stylized, mask, mode, feather, method)  # type: ignore[arg-type]
    assert np.array_equal(again[~kept], out[~kept])
    assert np.array_equal(again[kept], changed[kept])


@pytest.mark.parametrize("mode", ["object", "background"])
def test_histogram_preservation_matches_the_painted_region_only(
    mask: np.ndarray, mode: Mode
) -> None:
    original = _two_tone(mask)
    grey = np.random.default_rng(7).normal(128, 30, (H, W, 3)).clip(0, 255).astype(np.uint8)
    out = composite(original, grey, mask, mode=mode, preserve_color="histogram")
    painted = mask if mode == "object" else ~mask
    for channel in range(3):
        matched = np.percentile(out[:, :, channel][painted], [10, 50, 90])
        target = np.percentile(original[:, :, channel][painted], [10, 50, 90])
        assert np.abs(matched - target).max() <= 3  # the region's colours, not the frame's
    assert np.array_equal(out[~painted], original[~painted])
