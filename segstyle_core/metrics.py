"""IoU, Dice, precision and recall of two ``H×W bool`` masks. Both empty: every score 1.0; an
empty prediction has precision 1.0, an empty ground truth recall 1.0, the other scores 0.0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segstyle_core.errors import InputError


@dataclass(frozen=True)
class MaskScores:
    """Scores of a predicted mask against a reference mask, plus both areas in pixels."""

    iou: float
    dice: float
    precision: float
    recall: float
    pred_area: int
    gt_area: int


def score_masks(pred: np.ndarray, gt: np.ndarray) -> MaskScores:
    """Score ``pred`` against ``gt`` (``H×W bool`` each); :class:`InputError` if shapes differ."""
    if pred.shape != gt.shape:
        raise InputError(
            f"mask shapes differ: prediction {pred.shape} vs ground truth {gt.shape}; "
            "resize the prediction to the ground truth's size first"
        )
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    tp = int(np.count_nonzero(pred & gt))
    pred_area, gt_area = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    union = pred_area + gt_area - tp
    return MaskScores(
        iou=tp / union if union else 1.0,
        dice=2 * tp / (pred_area + gt_area) if pred_area + gt_area else 1.0,
        precision=tp / pred_area if pred_area else 1.0,
        recall=tp / gt_area if gt_area else 1.0,
        pred_area=pred_area,
        gt_area=gt_area,
    )


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two ``H×W bool`` masks (1.0 when both are empty)."""
    return score_masks(pred, gt).iou
