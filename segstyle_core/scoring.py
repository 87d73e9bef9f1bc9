"""Scores of predicted masks against ground truth, per prompt and per automatic mask.

A prompted segmenter isolates one object, while class-level ground truth merges every object of
the class, so each mask is scored twice: against the whole class mask and against the GT
instance its prompt came from (:func:`score_instance_aware`). :func:`prompt_scores` turns that
into one result-row dict per prompt, and :func:`match_auto_masks` pairs each GT instance with
its best automatic mask. Masks are ``H×W bool``; the empty-mask conventions are those of
:mod:`segstyle_core.metrics`.
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
    """Score ``mask`` against the whole class mask and against the prompt's own instance.

    Class-level ground truth merges every object of the class (all cars), while a prompted
    segmenter isolates one; the instance scores show how well the one object was found.

    Args:
        mask: predicted ``H×W bool`` mask.
        instance: the GT instance the prompt came from, or ``None`` (user prompts).
        class_mask: binarized class ground truth, ``H×W bool``.

    Returns:
        ``pred_area``; ``iou_class``, ``dice_class``, ``precision_class``, ``recall_class``,
        ``class_area``; and the same five with ``instance`` (``None`` without an instance).
        Empty-mask conventions are those of :mod:`segstyle_core.metrics`.

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
    """For each GT instance, the automatic mask with the highest IoU against it.

    Masks (``instance.mask`` and each ``prediction.mask``) are ``H×W bool`` of one image;
    returns ``[]`` when there are no predictions.

    An oracle matching, used to score automatic mode against GT: it tells how good the
    best available automatic mask is, not whether a user would pick it.
    """
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
    """One score dict per prompt, keyed by :data:`segstyle_core.results.SCHEMA` column names.

    ``iou``/``dice``/``precision``/``recall`` compare with the whole class; the ``*_instance``
    columns with the prompt's own GT instance (``None`` when the prompt has none).

    Args:
        predictions: masks in prompt order, each ``H×W bool``.
        class_mask: binarized ground truth ``H×W bool`` of the run's classes.
    """
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
