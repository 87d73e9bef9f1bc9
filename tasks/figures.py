"""Task: the seed's figures for one image in one panel PNG (GT, masks, stylized, composite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from segstyle_core.figures import image_panel
from segstyle_core.images import read_label_map, read_mask, read_rgb, write_png
from segstyle_core.metrics import score_masks
from segstyle_core.pipeline import load_masks, prompt_from_dict
from segstyle_core.stagecache import run_stage
from tasks.caching import StageCachePolicy
from tasks.common import STAGE_OPTIONS, timed


def _key_inputs(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    frame = inputs["frame"]
    gt, seg = inputs["gt_record"], inputs["segment_record"]
    files = {
        "image": frame["image_path"],
        "gt_mask": gt["outputs"]["gt_mask"],
        "masks": seg["outputs"]["masks"],
        "mask": inputs["metrics_record"]["outputs"]["mask"],
        "gt_color": frame.get("color_path") or frame["label_ids_path"],
    }
    for name in ("stylize_record", "composite_record"):
        record = inputs.get(name)
        if record:
            files[name] = next(iter(record["outputs"].values()))
    return files, {"prompts": gt["prompts"], "automatic": inputs["automatic"]}


@task(
    name="figures",
    task_run_name="figures-{frame[image_id]}",
    cache_policy=StageCachePolicy(stage="figures", key_inputs=_key_inputs),
    **STAGE_OPTIONS,
)
def figures(
    frame: dict[str, Any],
    gt_record: dict[str, Any],
    segment_record: dict[str, Any],
    metrics_record: dict[str, Any],
    automatic: bool,
    cache_dir: str,
    stylize_record: dict[str, Any] | None = None,
    composite_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``panel.png``: original, GT, binarized GT, mask with prompts, stylized, composite.

    The "predicted mask" tile and the caption's scores are for the mask the run uses (the
    metrics record's), against the class ground truth; automatic mode adds every automatic mask.
    """
    files, config = _key_inputs(locals())
    timing: dict[str, Any] = {}

    def compute(out: Path) -> dict[str, Any]:
        original = read_rgb(files["image"])
        class_mask = read_mask(files["gt_mask"])
        predictions = load_masks(files["masks"])
        union = read_mask(files["mask"])
        scores = score_masks(union, class_mask)
        gt_color = (
            read_rgb(files["gt_color"])
            if frame.get("color_path")
            else read_label_map(files["gt_color"])
        )
        panel = image_panel(
            original,
            gt_color,
            class_mask,
            union,
            [] if automatic else [prompt_from_dict(p) for p in config["prompts"]],
            read_rgb(files["stylize_record"]) if "stylize_record" in files else None,
            read_rgb(files["composite_record"]) if "composite_record" in files else None,
            {"iou": scores.iou, "dice": scores.dice},
            auto_masks=[p.mask for p in predictions] if automatic else None,
            title=f"{frame['image_id']} · used mask vs class GT",
        )
        return {"outputs": {"panel": str(write_png(out / "panel.png", panel))}}

    with timed(timing):
        record = run_stage("figures", cache_dir, files, config, compute)
    return {**record, **timing}
