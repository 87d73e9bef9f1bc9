"""Scores of predicted ``H×W bool`` masks against the class's GT mask and the prompt's instance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from segstyle_core.metrics import MaskScores, score_masks
from segstyle_core.segment.base import MaskPrediction, Prompt

if TYPE_CHECKING:
    from segstyle_core.cityscapes import Instance


def _columns(scores: MaskScores | None, suffix: str, area: str) -> dict[str, float | int | None]:
    """``iou<suffix>`` ... ``recall<suffix>`` and ``area`` (the reference's); ``None``s without."""
    keys = {f"{key}{suffix}": key for key in ("iou", "dice", "precision", "recall")}
    keys[area] = "gt_area"
    return {column: getattr(scores, key) if scores else None for column, key in keys.items()}


def match_auto_masks(
    predictions: list[MaskPrediction], instances: list[Instance]
) -> list[tuple[Instance, MaskPrediction]]:
    """For each GT instance, the automatic mask of highest IoU against it (oracle matching)."""
    return [
        (instance, max(predictions, key=lambda p: score_masks(p.mask, instance.mask).iou))
        for instance in instances
        if predictions
    ]


def prompt_scores(
    predictions: list[MaskPrediction],
    prompts: list[Prompt],
    class_mask: np.ndarray,
    instances: list[Instance],
) -> list[dict[str, Any]]:
    """Result columns per prompt (``predictions`` in prompt order): ``iou`` ... ``gt_area`` against
    the class, ``pred_area``, ``*_instance``/``instance_area`` against the prompt's instance."""
    by_id: dict[int | None, Instance] = {inst.instance_id: inst for inst in instances}
    rows = []
    for prediction, prompt in zip(predictions, prompts, strict=True):
        instance = by_id.get(prompt.instance_id)
        whole = score_masks(prediction.mask, class_mask)
        own = score_masks(prediction.mask, instance.mask) if instance is not None else None
        rows.append(
            {
                **_columns(whole, "", "gt_area"),
                "pred_area": whole.pred_area,
                **_columns(own, "_instance", "instance_area"),
                "mask_score": prediction.score,
                "segment_notes": ";".join(prediction.notes),
            }
        )
    return rows
