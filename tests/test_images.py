"""Image reading converts what it can and names the file in every error."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segstyle_core.errors import InputError
from segstyle_core.images import read_label_map, read_mask, read_rgb, write_png


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_modes_are_converted_to_rgb(tmp_path: Path, mode: str) -> None:
    source = Image.fromarray(np.arange(48 * 32 * 3, dtype=np.uint8).reshape(32, 48, 3) % 251)
    path = tmp_path / f"image-{mode.replace(';', '')}.png"
    image = source.convert("I;16") if mode == "I;16" else source.convert(mode)
    image.save(path) if mode != "CMYK" else image.save(path.with_suffix(".jpg"))
    array = read_rgb(path if mode != "CMYK" else path.with_suffix(".jpg"))
    assert array.shape == (32, 48, 3) and array.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 250).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    array = read_rgb(tmp_path / "deep.png")
    assert array[..., 0].max() == 255 and array[0, 0, 0] == 0
    assert len(np.unique(array[..., 0])) > 200  # the range is kept, not saturated


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"this is text, not a PNG", "not a readable image")],
)
def test_bad_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad image ü.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        read_rgb(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_png_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(InputError, match="truncated.png"):
        read_rgb(path)


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(InputError, match="above the limit of 10000"):
        read_rgb(path, max_pixels=10_000)
    assert read_rgb(path, max_pixels=60_000).shape == (200, 300, 3)


def test_png_round_trips(tmp_path: Path) -> None:
    mask = np.zeros((8, 9), bool)
    mask[2:5, 3:7] = True
    assert np.array_equal(read_mask(write_png(tmp_path / "m.png", mask)), mask)
    labels = np.array([[0, 26000, 26001], [7, 8, 24000]], dtype=np.uint16)
    assert np.array_equal(read_label_map(write_png(tmp_path / "ids.png", labels)), labels)
