"""Scores of predicted masks (``H×W bool``) against ground truth.

A prompted segmenter isolates one object, while class-level ground truth merges every object of
the class, so each mask is scored against the whole class mask and against the GT instance its
prompt came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from segstyle_core.metrics import MaskScores, score_masks
from segstyle_core.segment.base import MaskPrediction, Prompt

if TYPE_CHECKING:
    from segstyle_core.cityscapes import Instance

_SCORE_KEYS = ("iou", "dice", "precision", "recall")


def _named_scores(scores: MaskScores | None, reference: str) -> dict[str, float | int | None]:
    """``{score}_{reference}`` for each of :data:`_SCORE_KEYS`, and ``{reference}_area``; all
    ``None`` when ``scores`` is ``None`` (no reference to score against)."""
    values: dict[str, float | int | None] = {
        f"{key}_{reference}": getattr(scores, key) if scores else None for key in _SCORE_KEYS
    }
    values[f"{reference}_area"] = scores.gt_area if scores else None
    return values


def score_instance_aware(
    mask: np.ndarray, instance: Instance | None, class_mask: np.ndarray
) -> dict[str, float | int | None]:
    """Score ``mask`` against ``class_mask`` and against the prompt's ``instance`` (``None``:
    user prompts): ``pred_area``; ``iou_class``, ``dice_class``, ``precision_class``,
    ``recall_class``, ``class_area``; the same five with ``instance`` (``None`` without one).

    Raises:
        InputError: the masks' shapes differ.
    """
    instance_scores = score_masks(mask, instance.mask) if instance is not None else None
    return {
        "pred_area": int(np.count_nonzero(mask)),
        **_named_scores(score_masks(mask, class_mask), "class"),
        **_named_scores(instance_scores, "instance"),
    }


def match_auto_masks(
    predictions: list[MaskPrediction], instances: list[Instance]
) -> list[tuple[Instance, MaskPrediction]]:
    """For each GT instance, the automatic mask with the highest IoU against it (``[]``
    without predictions): an oracle matching, telling how good the best available automatic
    mask is, not whether a user would pick it."""
    if not predictions:
        return []
    return [
        (instance, max(predictions, key=lambda p: score_masks(p.mask, instance.mask).iou))
        for instance in instances
    ]


def prompt_scores(
    predictions: list[MaskPrediction],
    prompts: list[Prompt],
    class_mask: np.ndarray,
    instances: list[Instance],
) -> list[dict[str, Any]]:
    """One score dict per prompt (``predictions`` in prompt order), keyed by result columns:
    ``iou`` ... against the whole class, ``*_instance`` against the prompt's own instance."""
    by_id = {inst.instance_id: inst for inst in instances}
    rows = []
    for prediction, prompt in zip(predictions, prompts, strict=True):
        instance = by_id.get(prompt.instance_id) if prompt.instance_id is not None else None
        scores = score_instance_aware(prediction.mask, instance, class_mask)
        rows.append(
            {
                "iou": scores["iou_class"],
                "dice": scores["dice_class"],
                "precision": scores["precision_class"],
                "recall": scores["recall_class"],
                "gt_area": scores["class_area"],
                "pred_area": scores["pred_area"],
                "iou_instance": scores["iou_instance"],
                "dice_instance": scores["dice_instance"],
                "precision_instance": scores["precision_instance"],
                "recall_instance": scores["recall_instance"],
                "instance_area": scores["instance_area"],
                "mask_score": prediction.score,
                "segment_notes": ";".join(prediction.notes),
            }
        )
    return rows
