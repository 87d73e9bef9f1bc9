"""Reading and writing images: ``H×W×3 uint8 RGB``, label maps ``H×W`` int, masks ``H×W bool``.
Readers convert grayscale, RGBA, palette and 16-bit files and apply the EXIF ``Orientation``."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.Image import DecompressionBombError, DecompressionBombWarning

from segstyle_core.errors import ConfigError, InputError, storage_error
from segstyle_core.fileio import atomic_write_with, check_writable_folder

#: Images above this many pixels are refused before decoding (``$SEGSTYLE_MAX_PIXELS``).
DEFAULT_MAX_PIXELS = 64_000_000


def max_pixels_default() -> int:
    """``$SEGSTYLE_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS` (ConfigError: not a number)."""
    text = os.environ.get("SEGSTYLE_MAX_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not (text.isascii() and text.isdigit() and len(text) <= 15 and int(text) > 0):
        raise ConfigError(
            f"SEGSTYLE_MAX_PIXELS={text[:20]!r}: not a positive whole number of pixels; "
            f"set e.g. SEGSTYLE_MAX_PIXELS={DEFAULT_MAX_PIXELS} or unset it"
        )
    return int(text)


def check_rgb(
    array: np.ndarray, what: str, fix: str = "read it with segstyle_core.images.read_rgb"
) -> np.ndarray:
    """``array`` if it is a non-empty ``H×W×3 uint8 RGB`` image, else InputError naming ``what``."""
    got = f"a {type(array).__name__}"
    if isinstance(array, np.ndarray):
        if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8 and array.size:
            return array
        got = f"shape {array.shape} dtype {array.dtype}"
    raise InputError(f"{what}: expected an H×W×3 uint8 RGB array, got {got}; {fix}")


def check_mask(mask: np.ndarray, size: tuple[int, int], what: str = "mask") -> np.ndarray:
    """``mask`` if it is an ``H×W bool`` array with ``(H, W) == size``, else InputError."""
    if mask.dtype != bool or mask.ndim != 2:
        raise InputError(
            f"{what}: expected an H×W bool array, got shape {mask.shape} dtype {mask.dtype}; "
            "pass e.g. `labels > 0` or MaskPrediction.mask"
        )
    if mask.shape != size:
        raise InputError(
            f"{what}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is "
            f"{size[1]}x{size[0]}; pass the mask predicted for this image at its original size"
        )
    return mask


def _open_checked(path: Path, max_pixels: int | None) -> Image.Image:
    """Open ``path``, check its size against the limit before decoding, turn it upright."""
    import cv2  # lazily: OpenCV is slow to import

    limit = max_pixels_default() if max_pixels is None else max_pixels
    if not path.is_file():
        raise InputError(f"{path}: no such image file; check the path")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes); re-export or re-download it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DecompressionBombWarning)
            image: Image.Image = Image.open(path)
            width, height = image.size
            if width * height > limit:
                raise InputError(
                    f"{path}: {width}x{height} is {width * height} pixels, above the limit of "
                    f"{limit}; downscale the image or raise SEGSTYLE_MAX_PIXELS"
                )
            image.load()
            # Pillow silently pads a short PNG's missing rows with black; libpng (OpenCV) refuses it
            if image.format == "PNG" and cv2.imdecode(np.fromfile(path, np.uint8), -1) is None:
                raise InputError(
                    f"{path}: truncated image data (the header promises more rows than the "
                    "file holds); replace the file"
                )
            with contextlib.suppress(Exception):  # Pillow raises many kinds on malformed EXIF
                image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, DecompressionBombError, DecompressionBombWarning) as exc:
        raise InputError(f"{path}: not a readable image ({exc}); replace the file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # the OS's error, not Pillow's
            raise storage_error(exc, path) from exc
        raise InputError(f"{path}: corrupt or truncated image ({exc}); replace the file") from exc
    return image


def read_rgb(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """An image file as ``H×W×3 uint8 RGB`` (16/32-bit gray scaled by its maximum to 0..255, a
    float image of 0..1 to 0..255, NaN and inf as 0; alpha dropped; InputError: missing, empty,
    corrupt, non-image or over-limit file)."""
    image = _open_checked(Path(path), max_pixels)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0, posinf=0, neginf=0)
        peak = values.max(initial=0.0)
        if image.mode == "F" and 0 < peak <= 1:
            scale = 255.0  # a float image in 0..1
        else:
            scale = 255.0 / peak if peak > 255 else 1.0
        gray = np.clip(values * scale, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def read_label_map(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Read a single-channel label PNG (labelIds uint8, instanceIds uint16) as ``H×W int32``."""
    image = _open_checked(Path(path), max_pixels)
    array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(
            f"{path}: expected a single-channel label image, got mode {image.mode}; "
            "use the *_labelIds.png / *_instanceIds.png files"
        )
    return array.astype(np.int32)


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``H×W×3 uint8``, ``H×W uint8/uint16`` or ``H×W bool`` (as 0/255) to PNG atomically."""
    image = _as_image(array, "PNG", path)
    return atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"))


def check_same_size(a: np.ndarray, b: np.ndarray, what: str, path: str | os.PathLike[str]) -> None:
    """InputError naming ``path`` unless ``a`` and ``b`` share height and width."""
    if a.shape[:2] != b.shape[:2]:
        raise InputError(
            f"{path}: {what} is {b.shape[1]}x{b.shape[0]} but the image is "
            f"{a.shape[1]}x{a.shape[0]}; use the file that belongs to this image"
        )


def read_mask(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Read a mask image (0 = outside, anything else = inside; colour masks by luminance)."""
    return np.asarray(_open_checked(Path(path), max_pixels).convert("L")) > 127


#: Output suffix (lower case) -> Pillow format name.
OUTPUT_FORMATS: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
DEFAULT_QUALITY = 95  # JPEG/WebP, 1..100


def output_format(path: str | os.PathLike[str]) -> str:
    """The Pillow format that ``path``'s suffix names (ConfigError: any other suffix)."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        what = f"suffix {suffix!r}" if suffix else "no suffix"
        raise ConfigError(
            f"{path}: output has {what}; name it with one of {', '.join(OUTPUT_FORMATS)}"
        )
    return OUTPUT_FORMATS[suffix]


def check_output_path(
    output: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str] | None] = ()
) -> Path:
    """``output``'s path (ConfigError: unknown suffix, a directory, one of ``inputs`` (same path
    or inode), or a parent that is a file or not writable)."""
    path = Path(output).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give an image file name such as out.png")
    output_format(path)
    for source in inputs:
        if source is not None and _same_file(path, Path(source).expanduser()):
            raise ConfigError(
                f"{path}: is also an input ({source}); writing it would destroy the input, "
                "choose another output name"
            )
    check_writable_folder(path.absolute().parent, str(path))
    return path


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):  # samefile: hard links; OSError: b does not exist yet
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    return False


def _as_image(array: np.ndarray, image_format: str, path: str | os.PathLike[str]) -> Image.Image:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    colour = array.ndim == 3 and array.shape[2] == 3
    if not (array.ndim == 2 or colour) or array.dtype not in (np.uint8, np.uint16):
        raise InputError(
            f"{path}: cannot write an array of shape {array.shape} and dtype {array.dtype}; "
            "pass H×W×3 uint8 RGB (or an H×W mask)"
        )
    if array.dtype == np.uint16 and (colour or image_format != "PNG"):
        raise InputError(f"{path}: 16-bit images can only be written as single-channel PNG")
    return Image.fromarray(np.ascontiguousarray(array))


def write_image(
    path: str | os.PathLike[str], rgb: np.ndarray, quality: int = DEFAULT_QUALITY
) -> Path:
    """Write ``rgb`` (``H×W×3 uint8``, or an ``H×W`` mask) atomically as PNG, JPEG or WebP by
    suffix, without EXIF; JPEG at ``quality`` 90+ keeps 4:4:4 chroma, WebP at 100 is lossless.
    ConfigError: unknown suffix or quality; InputError: not an image."""
    image_format = output_format(path)
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality={quality}: must be between 1 and 100")
    image = _as_image(rgb, image_format, path)
    options = {
        "JPEG": {"quality": quality, "subsampling": 0 if quality >= 90 else 2},
        "WEBP": {"quality": quality, "lossless": quality == 100},
    }.get(image_format, {})
    return atomic_write_with(path, lambda tmp: image.save(tmp, format=image_format, **options))
