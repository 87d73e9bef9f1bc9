"""Image reading converts what it can and names the file in every error."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import (
    check_output_path,
    read_label_map,
    read_mask,
    read_rgb,
    write_image,
    write_png,
)


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


def test_a_float_image_of_zero_to_one_is_scaled_not_black(tmp_path: Path) -> None:
    """A 32-bit float TIFF in 0..1 (a common export) read as 0 and 1 of 255 before; NaN and
    inf pixels read as 0."""
    values = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    values[0, 1], values[0, 2] = np.nan, np.inf
    Image.fromarray(values, mode="F").save(tmp_path / "float.tiff")
    array = read_rgb(tmp_path / "float.tiff")
    assert array.max() == 255 and array[8, 0, 0] == round(255 * values[8, 0])
    assert array[0, 1, 0] == array[0, 2, 0] == 0
    Image.fromarray(values[2:] * 200, mode="F").save(tmp_path / "wide.tiff")  # 0..200: as is
    assert read_rgb(tmp_path / "wide.tiff").max() == 200


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


# --- EXIF orientation ------------------------------------------------------------------------


def _phone_jpeg(path: Path) -> np.ndarray:
    """Write a 60 wide x 30 tall JPEG stored sideways with EXIF Orientation=6 (rotate 90° CW
    to display), as phones do; return the stored pixels."""
    stored = np.zeros((30, 60, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)  # red block at the stored top-left
    stored[-10:, -10:] = (0, 0, 255)  # blue block at the stored bottom-right
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    return stored


def test_exif_orientation_is_applied_on_read(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    _phone_jpeg(path)
    assert Image.open(path).size == (60, 30)  # stored sideways
    image = read_rgb(path)
    assert image.shape == (60, 30, 3)  # displayed: 30 wide, 60 tall
    # Rotating 90° clockwise moves the stored top-left to the displayed top-right.
    top_right = image[:10, -10:].reshape(-1, 3).mean(axis=0)
    bottom_left = image[-10:, :10].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[2] < 60
    assert bottom_left[2] > 200 and bottom_left[0] < 60
    # Masks read from such files line up with the image, too.
    assert read_mask(path).shape == (60, 30)


def test_damaged_exif_does_not_make_the_image_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageOps

    path = tmp_path / "phone.jpg"
    stored = _phone_jpeg(path)

    def broken(image: Image.Image) -> Image.Image:
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    assert read_rgb(path).shape == stored.shape


# --- output format and path checks -------------------------------------------------------------


def _picture() -> np.ndarray:
    y, x = np.mgrid[0:40, 0:56]
    return np.stack([x * 4, y * 6, (x + y) * 2], axis=2).astype(np.uint8)


@pytest.mark.parametrize(
    ("name", "fmt", "tolerance"),
    [("out.png", "PNG", 0), ("out.JPG", "JPEG", 6), ("out.jpeg", "JPEG", 6), ("o.webp", "WEBP", 8)],
)
def test_write_image_format_follows_suffix(
    tmp_path: Path, name: str, fmt: str, tolerance: float
) -> None:
    rgb = _picture()
    path = write_image(tmp_path / "sub" / name, rgb)
    assert path == tmp_path / "sub" / name
    assert Image.open(path).format == fmt
    back = read_rgb(path)
    assert back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() <= tolerance
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left


def test_write_image_quality_changes_jpeg_size(tmp_path: Path) -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    low = write_image(tmp_path / "low.jpg", noisy, quality=20).stat().st_size
    high = write_image(tmp_path / "high.jpg", noisy, quality=95).stat().st_size
    assert low < high / 2
    lossless = write_image(tmp_path / "exact.webp", noisy, quality=100)
    assert np.array_equal(read_rgb(lossless), noisy)
    with pytest.raises(ConfigError, match="quality=0"):
        write_image(tmp_path / "bad.jpg", noisy, quality=0)


def test_unknown_suffix_is_one_line_naming_file_and_formats(tmp_path: Path) -> None:
    for name in ("out.tif", "out"):
        with pytest.raises(ConfigError) as info:
            write_image(tmp_path / name, _picture())
        message = str(info.value)
        assert str(tmp_path / name) in message and "\n" not in message
        assert all(s in message for s in (".png", ".jpg", ".jpeg", ".webp"))
    with pytest.raises(ConfigError, match=r"out\.gif.*\.png"):
        check_output_path(tmp_path / "out.gif", [])
    assert not list(tmp_path.iterdir())


def test_check_output_path_refuses_inputs(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    write_png(image, _picture())
    style = tmp_path / "style.jpg"
    write_image(style, _picture())
    for same in (image, tmp_path / "." / "photo.png", tmp_path / "x" / ".." / "photo.png"):
        with pytest.raises(ConfigError, match="is also an input"):
            check_output_path(same, [image, style])
    hard_link = tmp_path / "link.png"
    hard_link.hardlink_to(image)
    with pytest.raises(ConfigError, match="is also an input"):
        check_output_path(hard_link, [image])
    sym_link = tmp_path / "sym.jpg"
    sym_link.symlink_to(style)
    with pytest.raises(ConfigError, match="is also an input"):
        check_output_path(sym_link, [None, style])
    assert check_output_path(tmp_path / "new" / "out.png", [image, style]) == (
        tmp_path / "new" / "out.png"
    )


def test_check_output_path_refuses_directories_and_bad_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        check_output_path(tmp_path / "folder.png", [])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_path(tmp_path / "file" / "deeper" / "out.png", [])
    # Root passes permission bits, so a refusing folder is simulated at the probe's create.
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: object, dir: str | Path, **kwargs: object) -> tuple[int, str]:
        if Path(dir) == tmp_path / "locked":
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    (tmp_path / "locked").mkdir()
    with pytest.raises(ConfigError, match="locked is not writable") as info:
        check_output_path(tmp_path / "locked" / "out.webp", [])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["abc", "1e9", "-5", "0", "9" * 40, "١٢"])
def test_a_bad_pixel_limit_setting_is_one_line(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segstyle_core.images import max_pixels_default

    monkeypatch.setenv("SEGSTYLE_MAX_PIXELS", value)
    with pytest.raises(ConfigError, match="SEGSTYLE_MAX_PIXELS=.*positive whole number") as info:
        max_pixels_default()
    assert "\n" not in str(info.value)


def test_the_pixel_limit_setting_is_read_and_empty_means_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from segstyle_core.images import DEFAULT_MAX_PIXELS, max_pixels_default

    monkeypatch.setenv("SEGSTYLE_MAX_PIXELS", " 1200 ")
    assert max_pixels_default() == 1200
    monkeypatch.setenv("SEGSTYLE_MAX_PIXELS", "")
    assert max_pixels_default() == DEFAULT_MAX_PIXELS


def test_an_output_folder_that_refuses_files_is_refused_before_any_work() -> None:
    """/proc accepts no new file, whatever its permission bits say (and root passes every
    os.access check): the probe creates a file, so the refusal comes before the work."""
    with pytest.raises(ConfigError, match=r"/proc/x.png: folder /proc is not writable") as info:
        check_output_path("/proc/x.png")
    assert "\n" not in str(info.value)


def test_a_png_whose_data_ends_before_its_last_row_is_refused(tmp_path: Path) -> None:
    """A valid PNG stream whose header says 300×300 but whose data holds 10 rows: Pillow would
    fill the other 290 with black; it is refused, and the same data in full reads back."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    def png(rows: int) -> bytes:
        pixels = b"".join(b"\x00" + bytes([128] * 300 * 3) for _ in range(rows))
        header = struct.pack(">IIBBBBB", 300, 300, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(pixels))
            + chunk(b"IEND", b"")
        )

    (tmp_path / "short.png").write_bytes(png(10))
    with pytest.raises(InputError, match="short.png: truncated image data") as info:
        read_rgb(tmp_path / "short.png")
    assert "\n" not in str(info.value)
    (tmp_path / "whole.png").write_bytes(png(300))
    assert (read_rgb(tmp_path / "whole.png") == 128).all()
