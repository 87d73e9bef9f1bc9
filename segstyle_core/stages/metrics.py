"""Stage ``metrics``: score one image's masks against the ``gt`` stage's ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segstyle_core.images import read_mask, write_png
from segstyle_core.masks import load_masks, save_masks, union_mask
from segstyle_core.metrics import score_masks
from segstyle_core.rle import encode_mask
from segstyle_core.scoring import match_auto_masks, prompt_scores
from segstyle_core.segment.base import Prompt
from segstyle_core.stagecache import StageRecord, stage
from segstyle_core.stages.gt import GtRecord
from segstyle_core.stages.segment import SegmentRecord


@dataclass(frozen=True, kw_only=True)
class MetricsRecord(StageRecord):
    """Outputs ``mask`` (the union of the used masks, PNG) and ``masks`` (one per score);
    ``scores``: per prompt, the ``prompt`` dict, its :func:`prompt_scores` columns, the used
    mask's ``image_iou``/``image_dice`` and its own mask as COCO RLE (``mask_rle``)."""

    scores: list[dict[str, Any]]


@stage(
    "metrics",
    code=(
        "segstyle_core.scoring",
        "segstyle_core.metrics",
        "segstyle_core.rle",
        "segstyle_core.masks",
    ),
    version=2,
)
def score_frame(out: Path, gt: GtRecord, masks: SegmentRecord, automatic: bool) -> MetricsRecord:
    """Score every prompt's mask (automatic: every GT instance's best-matching automatic mask,
    not all, which would paint the whole frame) against the GT."""
    class_mask = read_mask(gt.path("gt_mask"))
    instances = gt.regions()
    predictions = load_masks(masks.path("masks"))
    if automatic:
        pairs = match_auto_masks(predictions, instances)
        prompts = [Prompt(instance_id=i.instance_id, class_name=i.class_name) for i, _ in pairs]
        predictions = [p for _, p in pairs]
    else:
        prompts = gt.prompt_list()
    used = union_mask(predictions, class_mask.shape)
    image = score_masks(used, class_mask)
    scores = prompt_scores(predictions, prompts, class_mask, instances)
    return MetricsRecord(
        outputs={
            "mask": str(write_png(out / "mask.png", used)),
            "masks": str(save_masks(out / "masks.npz", predictions)),
        },
        scores=[
            {
                "prompt": p.as_dict(),
                **s,
                "image_iou": image.iou,
                "image_dice": image.dice,
                "mask_rle": encode_mask(prediction.mask),
            }
            for p, s, prediction in zip(prompts, scores, predictions, strict=True)
        ],
    )
