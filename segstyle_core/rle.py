"""Masks as COCO RLE JSON text ``{"size": [H, W], "counts": "<compressed RLE>"}`` (column-major,
as SAM's ``output_mode="coco_rle"``), so a result row carries its own mask."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from segstyle_core.errors import InputError


def encode_mask(mask: np.ndarray) -> str:
    """Encode an ``H×W`` mask (non-zero = inside) as COCO RLE JSON text (InputError: not 2-D)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(
            f"mask of shape {mask.shape} cannot be RLE-encoded; pass one H×W bool mask"
        )
    rle = mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    text = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return json.dumps(text, separators=(",", ":"))


def _parse(value: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    try:
        rle = dict(value) if isinstance(value, Mapping) else json.loads(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"mask RLE is not JSON ({exc}); expected a COCO RLE object") from None
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InputError(f'mask RLE needs "size" and "counts" keys (COCO RLE); got {rle!r:.80}')
    size = rle["size"]
    pair = isinstance(size, list | tuple) and len(size) == 2
    if not (pair and all(isinstance(v, int) and v >= 0 for v in size)):
        raise InputError(f"mask RLE size {size!r} must be [height, width]")
    return rle


def _runs(counts: bytes) -> list[int]:
    """Compressed ``counts`` as run lengths (``rleFrString``), checked: pycocotools is not."""
    runs: list[int] = []
    value = shift = 0
    for byte in counts:
        char = byte - 48
        if not 0 <= char < 64:
            raise InputError(f"mask RLE counts contain {chr(byte)!r}")
        value |= (char & 0x1F) << (5 * shift)
        shift += 1
        if not char & 0x20:  # the last 5-bit group of this run length
            if char & 0x10:
                value |= -1 << (5 * shift)
            runs.append(value + runs[-2] if len(runs) > 2 else value)
            value = shift = 0
    if shift:
        raise InputError("mask RLE counts end in the middle of a run length")
    return runs


def decode_mask(text: str | bytes | Mapping[str, Any]) -> np.ndarray:
    """COCO RLE (:func:`encode_mask` text or its parsed object; ``counts`` compressed or a list
    of run lengths) as an ``H×W bool`` mask (InputError: not COCO RLE, or runs not ``H×W``)."""
    rle = _parse(text)
    height, width = rle["size"]
    runs = rle["counts"]
    if isinstance(runs, str | bytes):
        runs = _runs(runs.encode("ascii", "replace") if isinstance(runs, str) else runs)
    elif not isinstance(runs, list) or not all(isinstance(v, int) for v in runs):
        raise InputError(
            f"mask RLE counts must be a string or a list of integers, not {runs!r:.40}"
        )
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise InputError(
            f"mask RLE runs cover {sum(runs)} pixels but its size {height}x{width} has "
            f"{height * width}; the mask text is damaged"
        )
    compressed = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return mask_utils.decode(compressed).astype(bool)
