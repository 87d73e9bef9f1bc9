"""Reading and writing images in segstyle's array formats.

Images are ``H×W×3 uint8 RGB`` arrays; label maps are ``H×W`` integer arrays; masks are
``H×W bool``. Every reader converts what it sensibly can (grayscale, RGBA, palette, 16-bit)
and turns everything else into an :class:`~segstyle_core.errors.InputError` that names the
file and says what to do.

Readers apply the EXIF ``Orientation`` tag (a phone photo taken upright but stored sideways
reads upright), so boxes, points and outputs are all in the orientation a viewer displays.
Outputs are written by :func:`write_image` in the format their suffix names (PNG, JPEG,
WebP); :func:`check_output_path` refuses a bad output path before any work is done.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segstyle_core.errors import ConfigError, InputError, storage_error
from segstyle_core.fileio import atomic_write_with, check_writable_folder

#: Images above this many pixels are refused before decoding (decompression-bomb guard).
#: Override per call, or with the ``SEGSTYLE_MAX_PIXELS`` environment variable.
DEFAULT_MAX_PIXELS = 64_000_000


def max_pixels_default() -> int:
    """The pixel limit from ``SEGSTYLE_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ConfigError: the variable is set but is not a positive whole number (one line).
    """
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
    """Return ``array`` if it is an ``H×W×3 uint8 RGB`` image with ``H, W >= 1``.

    The one check of an image array: every function that takes an image calls it.

    Args:
        array: the array to check, ``H×W×3 uint8``.
        what: names the array in the message (``"content image"``, a file path, ...).
        fix: what the message tells the user to do.

    Raises:
        InputError: not a numpy array, not three channels, not ``uint8``, or empty; one line
            ``"{what}: expected an H×W×3 uint8 RGB array, got ...; {fix}"``.
    """
    if not (
        isinstance(array, np.ndarray)
        and array.ndim == 3
        and array.shape[2] == 3
        and array.dtype == np.uint8
        and array.size > 0
    ):
        got = (
            f"shape {array.shape} dtype {array.dtype}"
            if isinstance(array, np.ndarray)
            else f"a {type(array).__name__}"
        )
        raise InputError(f"{what}: expected an H×W×3 uint8 RGB array, got {got}; {fix}")
    return array


def check_mask(mask: np.ndarray, size: tuple[int, int], what: str = "mask") -> np.ndarray:
    """Return ``mask`` if it is an ``H×W bool`` array with ``(H, W) == size``.

    The one check of a mask array: every function that takes a mask calls it.

    Raises:
        InputError: not 2-D ``bool``, or another size than ``size`` (the message names ``what``).
    """
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
    """Open ``path`` lazily, check its size against the limit, then decode it fully."""
    limit = max_pixels_default() if max_pixels is None else max_pixels
    if not path.is_file():
        raise InputError(f"{path}: no such image file; check the path")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes); re-export or re-download it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(path)
            width, height = image.size
            if width * height > limit:
                raise InputError(
                    f"{path}: {width}x{height} is {width * height} pixels, above the limit of "
                    f"{limit}; downscale the image or raise SEGSTYLE_MAX_PIXELS"
                )
            image.load()
            if image.format == "PNG":
                _check_png_data(path)
            image = _exif_upright(image)
    except InputError:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InputError(f"{path}: not a readable image ({exc}); replace the file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # the OS's error, not Pillow's
            raise storage_error(exc, path) from exc
        raise InputError(f"{path}: corrupt or truncated image ({exc}); replace the file") from exc
    return image


def _check_png_data(path: Path) -> None:
    """Refuse a PNG whose pixel data ends before its last row: Pillow fills the missing rows
    with black without a word; libpng (through OpenCV) refuses the file.

    Raises:
        InputError: the data is short or broken (one line naming the file).
    """
    import cv2

    if cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED) is None:
        raise InputError(
            f"{path}: truncated image data (the header promises more rows than the file "
            "holds); replace the file"
        )


def _exif_upright(image: Image.Image) -> Image.Image:
    """``image`` rotated/flipped as its EXIF ``Orientation`` tag says (unchanged without one).

    A damaged EXIF block is ignored rather than making a readable image unreadable.
    """
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # Pillow's EXIF parser raises many kinds on malformed tags
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


#: Output suffix (lower case) -> Pillow format name.
OUTPUT_FORMATS: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
#: JPEG/WebP quality used when none is given (1..100).
DEFAULT_QUALITY = 95


def output_format(path: str | os.PathLike[str]) -> str:
    """The Pillow format (``"PNG"``, ``"JPEG"``, ``"WEBP"``) that ``path``'s suffix names.

    Raises:
        ConfigError: any other suffix; the message names the file and the accepted suffixes.
    """
    suffix = Path(path).suffix.lower()
    try:
        return OUTPUT_FORMATS[suffix]
    except KeyError:
        what = f"suffix {suffix!r}" if suffix else "no suffix"
        raise ConfigError(
            f"{path}: output has {what}; name it with one of {', '.join(OUTPUT_FORMATS)}"
        ) from None


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: the same resolved path, or the same inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_output_path(
    output: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str] | None] = ()
) -> Path:
    """Check, before any work, that an image can be written to ``output``; return its path.

    Refuses (with one line naming the file and the fix) an unknown suffix (see
    :data:`OUTPUT_FORMATS`), an existing directory, ``output`` being any of ``inputs`` (same
    resolved path, or a hard link to the same inode), a parent that is a file, and a
    parent folder this user cannot write into. A parent that does not exist yet is fine when
    its nearest existing ancestor is writable (:func:`write_image` creates it).

    Raises:
        ConfigError: any refusal (it is the ``--output`` option that has to change).
    """
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
    """Write an image atomically in the format its suffix names: PNG, JPEG or WebP.

    ``rgb`` is ``H×W×3 uint8`` (``H×W uint8``/``bool`` masks work too; ``bool`` is written as
    0/255). ``quality`` (1..100) applies to JPEG and WebP: JPEG at 90 and above keeps full
    colour resolution (4:4:4, no chroma subsampling, so stylized edges do not bleed); WebP at
    100 is lossless. No EXIF is written: pixels are already upright.

    Raises:
        ConfigError: unknown suffix, or ``quality`` outside 1..100.
        InputError: an array that is not an image.
    """
    image_format = output_format(path)
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality={quality}: must be between 1 and 100")
    image = _as_image(rgb, image_format, path)
    options: dict[str, object] = {}
    if image_format == "JPEG":
        options = {"quality": quality, "subsampling": 0 if quality >= 90 else 2}
    elif image_format == "WEBP":
        options = {"quality": quality, "lossless": quality == 100}
    return atomic_write_with(path, lambda tmp: image.save(tmp, format=image_format, **options))
