"""Task: score one image's masks against its ground truth (class- and instance-level)."""

from __future__ import annotations

from typing import Any

from prefect import task

from segstyle_core import cityscapes
from segstyle_core.images import read_mask
from segstyle_core.metrics import score_masks
from segstyle_core.pipeline import (
    frame_from_dict,
    load_masks,
    match_auto_masks,
    prompt_from_dict,
    prompt_scores,
    union_mask,
)
from segstyle_core.segment.base import Prompt


@task(name="metrics", task_run_name="metrics-{frame[image_id]}", retries=2, retry_delay_seconds=1)
def score_frame(
    frame: dict[str, Any],
    classes: list[str],
    gt_record: dict[str, Any],
    segment_record: dict[str, Any],
    automatic: bool,
) -> list[dict[str, Any]]:
    """One score dict per prompt (per GT instance in automatic mode, best-matching mask).

    Each dict carries the prompt (``prompt`` as :meth:`Prompt.as_dict`), the IoU, Dice,
    precision and recall against the whole class and against the prompt's own instance, and
    ``image_iou``/``image_dice``: the union of all the image's masks against the class.
    """
    class_mask = read_mask(gt_record["outputs"]["gt_mask"])
    instances = cityscapes.load_instances(frame_from_dict(frame), classes)
    predictions = load_masks(segment_record["outputs"]["masks"])
    if automatic:
        pairs = match_auto_masks(predictions, instances)
        prompts = [Prompt(instance_id=i.instance_id, class_name=i.class_name) for i, _ in pairs]
        predictions = [p for _, p in pairs]
    else:
        prompts = [prompt_from_dict(p) for p in gt_record["prompts"]]
    scores = prompt_scores(predictions, prompts, class_mask, instances)
    image = score_masks(union_mask(predictions, class_mask.shape), class_mask)
    return [
        {"prompt": p.as_dict(), **s, "image_iou": image.iou, "image_dice": image.dice}
        for p, s in zip(prompts, scores, strict=True)
    ]
