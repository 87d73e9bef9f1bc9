"""Predicted masks on disk (one compressed ``.npz`` per image), and their union."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segstyle_core.fileio import atomic_write
from segstyle_core.segment.base import MaskPrediction


def save_masks(path: str | os.PathLike[str], predictions: list[MaskPrediction]) -> Path:
    """Masks as one compressed ``.npz``: ``masks`` ``N×H×W bool``, ``scores`` float64, ``notes``."""
    masks = np.stack([p.mask for p in predictions]) if predictions else np.zeros((0, 0, 0), bool)
    scores = np.array([p.score for p in predictions], dtype=np.float64)
    notes = np.array([";".join(p.notes) for p in predictions], dtype=str)
    with atomic_write(path) as handle:
        np.savez_compressed(handle, masks=masks, scores=scores, notes=notes)
    return Path(path)


def load_masks(path: str | os.PathLike[str]) -> list[MaskPrediction]:
    """Inverse of :func:`save_masks`: the predictions in stored order, masks ``H×W bool``."""
    with np.load(path) as data:
        return [
            MaskPrediction(mask=m, score=float(s), notes=tuple(n.split(";")) if n else ())
            for m, s, n in zip(data["masks"], data["scores"], data["notes"], strict=True)
        ]


def union_mask(predictions: list[MaskPrediction], shape: tuple[int, int]) -> np.ndarray:
    """Union of the predicted masks as ``H×W bool`` (all False when there are none)."""
    out = np.zeros(shape, dtype=bool)
    for prediction in predictions:  # one H×W buffer, not a stack of hundreds of masks
        out |= prediction.mask
    return out
