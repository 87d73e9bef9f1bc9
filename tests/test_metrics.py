"""IoU, Dice, precision, recall against direct counts; empty-mask conventions; shape errors."""

import numpy as np
import pytest

from segstyle_core.errors import InputError
from segstyle_core.metrics import iou, score_masks


def test_scores_match_direct_counts() -> None:
    rng = np.random.default_rng(0)
    pred = rng.random((40, 50)) > 0.5
    gt = rng.random((40, 50)) > 0.4
    tp = np.sum(pred & gt)
    scores = score_masks(pred, gt)
    assert scores.iou == pytest.approx(tp / np.sum(pred | gt))
    assert scores.dice == pytest.approx(2 * tp / (pred.sum() + gt.sum()))
    assert scores.precision == pytest.approx(tp / pred.sum())
    assert scores.recall == pytest.approx(tp / gt.sum())
    assert (scores.pred_area, scores.gt_area) == (pred.sum(), gt.sum())
    assert iou(pred, gt) == scores.iou


def test_dice_and_iou_relation_on_partial_overlap() -> None:
    pred = np.zeros((10, 10), bool)
    gt = np.zeros((10, 10), bool)
    pred[:, :6] = True
    gt[:, 4:] = True
    scores = score_masks(pred, gt)
    assert scores.iou == pytest.approx(20 / 100)
    assert scores.dice == pytest.approx(2 * scores.iou / (1 + scores.iou))


def test_empty_mask_conventions() -> None:
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    both = score_masks(empty, empty)
    assert (both.iou, both.dice, both.precision, both.recall) == (1.0, 1.0, 1.0, 1.0)
    missed = score_masks(empty, full)
    assert (missed.iou, missed.dice, missed.precision, missed.recall) == (0.0, 0.0, 1.0, 0.0)
    spurious = score_masks(full, empty)
    assert (spurious.iou, spurious.dice, spurious.precision, spurious.recall) == (
        0.0,
        0.0,
        0.0,
        1.0,
    )


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="shapes differ"):
        score_masks(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
