"""Task: segment one image with all of its prompts (or automatically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from segstyle_core.devices import memory_guard
from segstyle_core.images import read_rgb, write_png
from segstyle_core.pipeline import prompt_from_dict, save_masks, union_mask
from segstyle_core.segment import build_segmenter, segmenter_identity
from segstyle_core.segment.base import MaskPrediction
from segstyle_core.stagecache import run_stage
from tasks.caching import StageCachePolicy
from tasks.common import STAGE_OPTIONS, device_slot, timed


def _key_inputs(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    spec = inputs["spec"]
    config = {
        "prompts": inputs["prompts"],
        "automatic": inputs["automatic"],
        "segmenter": segmenter_identity(spec),
        "options": spec.get("options", {}),
    }
    return {"image": inputs["image_path"]}, config


@task(
    name="segment",
    task_run_name="segment-{image_id}",
    cache_policy=StageCachePolicy(stage="segment", key_inputs=_key_inputs),
    **STAGE_OPTIONS,
)
def segment(
    image_id: str,
    image_path: str,
    prompts: list[dict[str, Any]],
    automatic: bool,
    spec: dict[str, Any],
    cache_dir: str,
) -> dict[str, Any]:
    """Segment ``image_path``: one mask per prompt, or every automatic mask when ``automatic``.

    Writes ``masks.npz`` (see :func:`segstyle_core.pipeline.save_masks`; automatic masks also
    keep their records' ``predicted_iou`` as scores) and ``mask.png`` (the union).
    """
    files, config = _key_inputs(locals())
    timing: dict[str, Any] = {}

    def compute(out: Path) -> dict[str, Any]:
        image = read_rgb(image_path)
        segmenter = build_segmenter(spec, embedding_cache_dir=str(Path(cache_dir) / "embeddings"))
        what = (
            f"{image_path}: segmenting {image.shape[1]}x{image.shape[0]} ({len(prompts)} prompts)"
        )
        with device_slot(spec["device"]), memory_guard(what):
            if automatic:
                predictions = [
                    MaskPrediction(mask=r["segmentation"], score=float(r["predicted_iou"]))
                    for r in segmenter.generate(image)
                ]
            else:
                predictions = segmenter.segment(image, [prompt_from_dict(p) for p in prompts])
        union = union_mask(predictions, image.shape[:2])
        return {
            "outputs": {
                "masks": str(save_masks(out / "masks.npz", predictions)),
                "mask": str(write_png(out / "mask.png", union)),
            },
            **config["segmenter"],
            "count": len(predictions),
        }

    with timed(timing):
        record = run_stage("segment", cache_dir, files, config, compute)
    return {**record, **timing}
