"""Reading and writing images in segstyle's array formats.

Images are ``H×W×3 uint8 RGB`` arrays; label maps are ``H×W`` integer arrays; masks are
``H×W bool``. Every reader converts what it sensibly can (grayscale, RGBA, palette, 16-bit)
and turns everything else into an :class:`~segstyle_core.errors.InputError` that names the
file and says what to do.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segstyle_core.errors import InputError
from segstyle_core.fileio import atomic_write_with

#: Images above this many pixels are refused before decoding (decompression-bomb guard).
#: Override per call, or with the ``SEGSTYLE_MAX_PIXELS`` environment variable.
DEFAULT_MAX_PIXELS = 64_000_000


def max_pixels_default() -> int:
    """The pixel limit from ``SEGSTYLE_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    return int(os.environ.get("SEGSTYLE_MAX_PIXELS", DEFAULT_MAX_PIXELS))


def _open_checked(path: Path, max_pixels: int | None) -> Image.Image:
    """Open ``path`` lazily, check its size against the limit, then decode it fully."""
    limit = max_pixels_default() if max_pixels is None else max_pixels
    if not path.is_file():
        raise InputError(f"{path}: no such image file; check the path")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes); re-export or re-download it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > limit:
                raise InputError(
                    f"{path}: {width}x{height} is {width * height} pixels, above the limit of "
                    f"{limit}; downscale the image or raise SEGSTYLE_MAX_PIXELS"
                )
            image.load()
    except InputError:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InputError(f"{path}: not a readable image ({exc}); replace the file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: corrupt or truncated image ({exc}); replace the file") from exc
    return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any Pillow image (L, LA, P, RGBA, I;16, I, F, CMYK) to ``H×W×3 uint8 RGB``.

    16-bit and 32-bit single-channel images are scaled by their maximum to 0..255;
    alpha is dropped (composited on black is not assumed: the colour channels are kept).
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        scale = 255.0 / peak if peak > 255 else 1.0
        gray = np.clip(values * scale, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_rgb(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as ``H×W×3 uint8 RGB``, converting other modes.

    Raises:
        InputError: missing, empty, corrupt, non-image or over-limit file (message names it).
    """
    return to_rgb_array(_open_checked(Path(path), max_pixels))


def read_label_map(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Read a single-channel label PNG (labelIds uint8, instanceIds uint16) as ``H×W int32``."""
    path = Path(path)
    image = _open_checked(path, max_pixels)
    array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(
            f"{path}: expected a single-channel label image, got mode {image.mode}; "
            "use the *_labelIds.png / *_instanceIds.png files"
        )
    return array.astype(np.int32)


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``H×W×3 uint8``, ``H×W uint8/uint16`` or ``H×W bool`` (as 0/255) to PNG atomically."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array)
    return atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"))


def check_same_size(a: np.ndarray, b: np.ndarray, what: str, path: str | os.PathLike[str]) -> None:
    """Raise :class:`InputError` naming ``path`` unless ``a`` and ``b`` share height and width."""
    if a.shape[:2] != b.shape[:2]:
        raise InputError(
            f"{path}: {what} is {b.shape[1]}x{b.shape[0]} but the image is "
            f"{a.shape[1]}x{a.shape[0]}; use the file that belongs to this image"
        )


def read_mask(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Read a mask image (0 = outside, anything else = inside; colour masks by luminance)."""
    image = _open_checked(Path(path), max_pixels)
    return np.asarray(image.convert("L")) > 127 if image.mode != "1" else np.asarray(image)
