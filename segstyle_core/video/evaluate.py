"""Scoring a tracked mask against per-frame Cityscapes ground truth."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from cityscapesscripts.helpers.labels import labels

from segstyle_core import cityscapes
from segstyle_core.errors import InputError
from segstyle_core.images import read_rgb
from segstyle_core.metrics import iou, score_masks

#: Every Cityscapes class with instances (``car``, ``person``, ...).
INSTANCE_CLASSES = tuple(label.name for label in labels if label.hasInstances and label.id >= 0)


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two XYXY boxes (exclusive ends)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def gt_track(
    frames: Sequence[cityscapes.Frame], box: tuple[float, float, float, float]
) -> list[np.ndarray]:
    """The boxed object's ``H×W bool`` GT mask on every frame (empty from when it is gone).

    Instance ids are numbered per frame, so it follows the object through the GT alone: the
    instance whose box best overlaps ``box`` (XYXY on ``frames[0]``), then on each frame the one
    that best overlaps the previous GT mask. InputError: a missing or unreadable instanceIds PNG."""
    masks: list[np.ndarray] = []
    for frame in frames:
        instances = cityscapes.load_instances(frame, INSTANCE_CLASSES)
        # an instance mask is never empty: none overlaps an empty previous mask
        overlap = [iou(i.mask, masks[-1]) if masks else _box_iou(i.box, box) for i in instances]
        if overlap and max(overlap) > 0:
            masks.append(instances[int(np.argmax(overlap))].mask)
        else:
            shape = masks[-1].shape if masks else read_rgb(frame.image_path).shape[:2]
            masks.append(np.zeros(shape, dtype=bool))
    return masks


def track_scores(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> dict[str, Any]:
    """``{"iou": [...], "dice": [...], "mean_iou", "mean_dice"}`` of ``H×W bool`` masks."""
    scores = [score_masks(p, t) for p, t in zip(predicted, truth, strict=True)]
    columns = {"iou": [s.iou for s in scores], "dice": [s.dice for s in scores]}
    return {**columns, **{f"mean_{name}": float(np.mean(v)) for name, v in columns.items()}}


def has_instance_gt(image_paths: Iterable[str]) -> bool:
    """True when every frame is a Cityscapes ``leftImg8bit`` image with an instanceIds PNG."""
    try:
        return all(cityscapes.frame_from_image_path(p).instance_ids_path for p in image_paths)
    except InputError:  # a frame outside the Cityscapes layout: no ground truth
        return False
