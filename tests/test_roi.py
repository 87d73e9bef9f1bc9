"""Region-of-interest stylization: box, crop, paste back, composite."""

from __future__ import annotations

import numpy as np
import pytest

from segstyle_core.composite import resize_to
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.roi import bucket_box, roi_box, stylize_roi
from segstyle_core.styles import make_geometric_abstraction
from segstyle_core.stylize.base import ProgressCallback
from segstyle_core.stylize.feedforward import FeedForwardStylizer
from tests.test_composite import composite

H, W = 64, 80


class HalfSizeInverter:
    """A stand-in stylizer: inverts the crop it is given and returns it at half size."""

    name = "invert"
    variant = "half-size"
    weights_sha256: str | None = None

    def __init__(self) -> None:
        self.crops: list[np.ndarray] = []

    def stylize(
        self, content: np.ndarray, style: np.ndarray, progress: ProgressCallback | None = None
    ) -> np.ndarray:
        self.crops.append(content.copy())
        return 255 - resize_to(content, (content.shape[0] // 2, content.shape[1] // 2))


@pytest.fixture()
def content() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture()
def mask() -> np.ndarray:
    region = np.zeros((H, W), bool)
    region[20:40, 30:50] = True
    region[25, 28] = True  # a stray pixel widens the box to x=28
    return region


def test_roi_box_adds_margins_and_clips(mask: np.ndarray) -> None:
    assert roi_box(mask, margin_pct=0.0) == (28, 20, 50, 40)
    assert roi_box(mask) == (25, 18, 53, 42)  # default: 10 % of 22x20, rounded up
    assert roi_box(mask, margin_px=5, margin_pct=0.0) == (23, 15, 55, 45)
    assert roi_box(mask, margin_pct=0.5) == (17, 10, 61, 50)
    assert roi_box(mask, margin_px=2, margin_pct=0.1) == (23, 16, 55, 44)
    assert roi_box(mask, margin_px=100) == (0, 0, W, H)
    with pytest.raises(ConfigError, match="must be >= 0"):  # would shrink into the mask
        roi_box(mask, margin_px=-1)


def test_empty_mask_is_an_input_error(content: np.ndarray) -> None:
    empty = np.zeros((H, W), bool)
    with pytest.raises(InputError, match="selects no pixel"):
        roi_box(empty)
    with pytest.raises(InputError, match="selects no pixel"):
        stylize_roi(HalfSizeInverter(), content, content, empty)


def test_stylize_roi_pastes_the_stylized_crop_back(content: np.ndarray, mask: np.ndarray) -> None:
    stylizer = HalfSizeInverter()
    out = stylize_roi(stylizer, content, content, mask, margin_px=4, margin_pct=0.0, bucket_px=0)
    x0, y0, x1, y1 = roi_box(mask, margin_px=4, margin_pct=0.0)
    assert out.shape == content.shape and out.dtype == np.uint8
    assert len(stylizer.crops) == 1
    assert np.array_equal(stylizer.crops[0], content[y0:y1, x0:x1])
    outside = np.ones((H, W), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], content[outside])
    crop = content[y0:y1, x0:x1]
    half = resize_to(crop, (crop.shape[0] // 2, crop.shape[1] // 2))
    expected = resize_to(255 - half, crop.shape[:2])
    assert np.array_equal(out[y0:y1, x0:x1], expected)


def test_bucket_box_rounds_sides_up_with_image_pixels_inside_the_image() -> None:
    assert bucket_box((24, 16, 54, 44), (H, W), 16) == (23, 14, 55, 46)  # 30x28 -> 32x32
    assert bucket_box((70, 50, 80, 64), (H, W), 16) == (64, 48, 80, 64)  # shifted inside
    assert bucket_box((0, 0, 70, 10), (H, W), 64) == (0, 0, W, 64)  # capped at the image
    assert bucket_box((3, 4, 9, 7), (H, W), 0) == (3, 4, 9, 7)  # off
    # boxes of one bucket give one crop shape
    shapes = {
        (b[3] - b[1], b[2] - b[0])
        for b in (bucket_box((5, 5, 5 + n, 9 + n), (H, W), 32) for n in range(2, 20))
    }
    assert shapes == {(32, 32)}


def test_stylize_roi_stylizes_the_bucket_and_pastes_only_the_box(
    content: np.ndarray, mask: np.ndarray
) -> None:
    stylizer = HalfSizeInverter()
    out = stylize_roi(stylizer, content, content, mask, margin_px=4, margin_pct=0.0, bucket_px=16)
    x0, y0, x1, y1 = roi_box(mask, margin_px=4, margin_pct=0.0)  # (24, 16, 54, 44)
    assert np.array_equal(stylizer.crops[0], content[14:46, 23:55])  # the 32x32 bucket
    outside = np.ones((H, W), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], content[outside])
    half = resize_to(content[14:46, 23:55], (16, 16))
    expected = resize_to(255 - half, (32, 32))[y0 - 14 : y1 - 14, x0 - 23 : x1 - 23]
    assert np.array_equal(out[y0:y1, x0:x1], expected)


def test_roi_with_the_feedforward_stylizer_composites_like_a_whole_frame(
    content: np.ndarray, mask: np.ndarray
) -> None:
    stylizer = FeedForwardStylizer(content_size=None, style_size=64, threads=1)
    style = make_geometric_abstraction(size=(64, 64))
    out = stylize_roi(stylizer, content, style, mask, margin_px=3)
    x0, y0, x1, y1 = roi_box(mask, margin_px=3)
    assert out.shape == content.shape
    assert np.array_equal(out[:y0], content[:y0]) and np.array_equal(out[:, x1:], content[:, x1:])
    assert np.abs(out[y0:y1, x0:x1].astype(int) - content[y0:y1, x0:x1]).mean() > 10
    final = composite(content, out, mask)
    assert np.array_equal(final[~mask], content[~mask])
    assert np.array_equal(final[mask], out[mask])


def test_mask_of_wrong_size_is_an_input_error(content: np.ndarray) -> None:
    with pytest.raises(InputError, match="mask is 10x10"):
        stylize_roi(HalfSizeInverter(), content, content, np.ones((10, 10), bool))


# --- issue #15.9: an ROI in background mode paints everything outside the mask -------------


def test_background_roi_box_is_the_box_of_everything_outside_the_mask(mask: np.ndarray) -> None:
    assert roi_box(mask, margin_pct=0.0, mode="background") == (0, 0, W, H)
    left = np.zeros((H, W), bool)
    left[:, :30] = True  # the object fills the left columns: the background is the rest
    assert roi_box(left, margin_pct=0.0, mode="background") == (30, 0, W, H)
    assert roi_box(left, margin_px=2, margin_pct=0.0, mode="background") == (28, 0, W, H)
    with pytest.raises(InputError, match="covers the whole image"):
        roi_box(np.ones((H, W), bool), mode="background")


def test_background_mode_with_an_roi_paints_every_pixel_outside_the_mask(
    content: np.ndarray, mask: np.ndarray
) -> None:
    stylizer = HalfSizeInverter()
    out = stylize_roi(stylizer, content, content, mask, margin_px=4, mode="background")
    final = composite(content, out, mask, mode="background")
    assert np.array_equal(final[mask], content[mask])
    whole = resize_to(HalfSizeInverter().stylize(content, content), (H, W))
    assert np.array_equal(final[~mask], whole[~mask])  # no unpainted rectangle edge
    # object mode, as before: only the mask's box is stylized
    boxed = stylize_roi(HalfSizeInverter(), content, content, mask, margin_px=4, margin_pct=0.0)
    x0, y0, x1, y1 = roi_box(mask, margin_px=4, margin_pct=0.0)
    assert np.array_equal(boxed[:y0], content[:y0]) and (x0, y0, x1, y1) != (0, 0, W, H)
