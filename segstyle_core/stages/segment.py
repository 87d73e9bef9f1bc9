"""Stage ``segment``: one image's masks, one per prompt, or every automatic mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segstyle_core.devices import memory_guard
from segstyle_core.images import read_rgb, write_png
from segstyle_core.masks import save_masks, union_mask
from segstyle_core.segment import SegmenterConfig
from segstyle_core.segment.base import MaskPrediction, Prompt
from segstyle_core.stagecache import StageRecord, backend_key, stage


@dataclass(frozen=True, kw_only=True)
class SegmentRecord(StageRecord):
    """Outputs ``masks`` (:func:`~segstyle_core.masks.save_masks`) and their union, ``mask`` PNG."""

    count: int


def segmenter_key(segmenter: SegmenterConfig) -> dict[str, Any]:
    exclude = {"device", "weights_dir", "checkpoint"}
    return backend_key(segmenter, segmenter.model_dump(mode="json", exclude=exclude))


@stage(
    "segment",
    files=("image",),
    keys={"segmenter": segmenter_key},
    code=("segstyle_core.segment", "segstyle_core.masks"),
    heavy=True,
)
def segment(
    out: Path,
    image: str,
    prompts: list[dict[str, Any]],
    automatic: bool,
    segmenter: SegmenterConfig,
) -> SegmentRecord:
    """Segment ``image``: one mask per prompt (:meth:`Prompt.as_dict`), or every automatic mask
    (scored by ``predicted_iou``); SAM's image embeddings are cached in ``<cache>/embeddings``."""
    pixels = read_rgb(image)
    cache = out.parents[2]  # out: <cache>/segment/<key[:2]>/<key>
    model = segmenter.build(embedding_cache_dir=str(cache / "embeddings"))
    what = f"{image}: segmenting {pixels.shape[1]}x{pixels.shape[0]} ({len(prompts)} prompts)"
    with memory_guard(what):
        if automatic:
            predictions = [
                MaskPrediction(mask=r["segmentation"], score=float(r["predicted_iou"]))
                for r in model.generate(pixels)
            ]
        else:
            predictions = model.segment(pixels, [Prompt.from_dict(p) for p in prompts])
    return SegmentRecord(
        outputs={
            "masks": str(save_masks(out / "masks.npz", predictions)),
            "mask": str(write_png(out / "mask.png", union_mask(predictions, pixels.shape[:2]))),
        },
        count=len(predictions),
    )
