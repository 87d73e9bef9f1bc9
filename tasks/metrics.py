"""Task: score one image's masks against its ground truth and write the mask that is used.

With prompts, the used mask is the union of the prompt masks. In automatic mode each GT
instance is scored against its best-matching automatic mask, and the used mask is the union of
those matches: compositing every automatic mask would paint the whole frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from segstyle_core import cityscapes
from segstyle_core.images import read_mask, write_png
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
from segstyle_core.stagecache import run_stage
from tasks.caching import StageCachePolicy
from tasks.common import STAGE_OPTIONS


def _key_inputs(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    frame = inputs["frame"]
    files = {
        "gt_mask": inputs["gt_record"]["outputs"]["gt_mask"],
        "masks": inputs["segment_record"]["outputs"]["masks"],
        "instance_ids": frame["instance_ids_path"],
    }
    config = {
        "classes": sorted(c.lower() for c in inputs["classes"]),
        "prompts": inputs["gt_record"]["prompts"],
        "automatic": inputs["automatic"],
    }
    return files, config


@task(
    name="metrics",
    task_run_name="metrics-{frame[image_id]}",
    cache_policy=StageCachePolicy(stage="metrics", key_inputs=_key_inputs),
    **STAGE_OPTIONS,
)
def score_frame(
    frame: dict[str, Any],
    classes: list[str],
    gt_record: dict[str, Any],
    segment_record: dict[str, Any],
    automatic: bool,
    cache_dir: str,
) -> dict[str, Any]:
    """Score every prompt's mask (every GT instance's best automatic mask) against the GT.

    Returns a record whose ``scores`` hold one dict per prompt: the prompt (``prompt`` as
    :meth:`Prompt.as_dict`), IoU, Dice, precision and recall against the whole class and
    against the prompt's own instance, and ``image_iou``/``image_dice`` of the used mask
    against the class; ``outputs["mask"]`` is the used mask (``mask.png``).
    """
    files, config = _key_inputs(locals())

    def compute(out: Path) -> dict[str, Any]:
        class_mask = read_mask(files["gt_mask"])
        instances = cityscapes.load_instances(frame_from_dict(frame), classes)
        predictions = load_masks(files["masks"])
        if automatic:
            pairs = match_auto_masks(predictions, instances)
            prompts = [Prompt(instance_id=i.instance_id, class_name=i.class_name) for i, _ in pairs]
            predictions = [p for _, p in pairs]
        else:
            prompts = [prompt_from_dict(p) for p in config["prompts"]]
        used = union_mask(predictions, class_mask.shape)
        image = score_masks(used, class_mask)
        scores = prompt_scores(predictions, prompts, class_mask, instances)
        return {
            "outputs": {"mask": str(write_png(out / "mask.png", used))},
            "scores": [
                {"prompt": p.as_dict(), **s, "image_iou": image.iou, "image_dice": image.dice}
                for p, s in zip(prompts, scores, strict=True)
            ],
        }

    return run_stage("metrics", cache_dir, files, config, compute)
