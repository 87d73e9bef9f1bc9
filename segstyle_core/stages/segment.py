"""Stage ``segment``: one image's masks, one per prompt, or every automatic mask."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segstyle_core.devices import memory_guard
from segstyle_core.images import read_rgb, write_png
from segstyle_core.masks import save_masks, union_mask
from segstyle_core.segment import SegmenterConfig
from segstyle_core.segment.base import MaskPrediction, Prompt
from segstyle_core.stagecache import StageKey, StageRecord, stage


@dataclass(frozen=True, kw_only=True)
class SegmentRecord(StageRecord):
    """Outputs ``masks`` (``masks.npz``, see :func:`segstyle_core.masks.save_masks`) and
    ``mask`` (their union as PNG); ``count`` masks."""

    count: int


def segmenter_key(segmenter: SegmenterConfig) -> dict[str, Any]:
    """What of a segmenter changes its masks: its identity and its settings (not where it runs
    or where its weights live)."""
    settings = segmenter.model_dump(mode="json", exclude={"device", "weights_dir", "checkpoint"})
    return {"identity": dataclasses.asdict(segmenter.identity()), "settings": settings}


def _key(
    image_id: str,
    image_path: str,
    prompts: list[dict[str, Any]],
    automatic: bool,
    segmenter: SegmenterConfig,
    cache_dir: str,
) -> StageKey:
    config = {"prompts": prompts, "automatic": automatic, "segmenter": segmenter_key(segmenter)}
    return StageKey({"image": image_path}, config)


@stage("segment", key=_key, code=("segstyle_core.segment", "segstyle_core.masks"), heavy=True)
def segment(
    out: Path,
    image_id: str,
    image_path: str,
    prompts: list[dict[str, Any]],
    automatic: bool,
    segmenter: SegmenterConfig,
    cache_dir: str,
) -> SegmentRecord:
    """Segment ``image_path``: one mask per prompt (each :meth:`Prompt.as_dict`), or every
    automatic mask when ``automatic`` (their scores: the generator's ``predicted_iou``)."""
    image = read_rgb(image_path)
    model = segmenter.build(embedding_cache_dir=str(Path(cache_dir) / "embeddings"))
    what = f"{image_path}: segmenting {image.shape[1]}x{image.shape[0]} ({len(prompts)} prompts)"
    with memory_guard(what):
        if automatic:
            predictions = [
                MaskPrediction(mask=r["segmentation"], score=float(r["predicted_iou"]))
                for r in model.generate(image)
            ]
        else:
            predictions = model.segment(image, [Prompt.from_dict(p) for p in prompts])
    return SegmentRecord(
        outputs={
            "masks": str(save_masks(out / "masks.npz", predictions)),
            "mask": str(write_png(out / "mask.png", union_mask(predictions, image.shape[:2]))),
        },
        count=len(predictions),
    )
