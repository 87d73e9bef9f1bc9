"""Task: binarize one frame's ground truth by class and derive its prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from segstyle_core import cityscapes
from segstyle_core.fileio import write_json_atomic
from segstyle_core.images import write_png
from segstyle_core.pipeline import frame_from_dict, frame_prompts
from segstyle_core.prompts import load_prompts_file
from segstyle_core.stagecache import run_stage
from tasks.caching import StageCachePolicy
from tasks.common import STAGE_OPTIONS, timed


def _key_inputs(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    frame = inputs["frame"]
    files = {
        name: frame[name]
        for name in ("image_path", "label_ids_path", "instance_ids_path")
        if frame.get(name)
    }
    if inputs["prompt_source"] not in ("gt-instances", "largest", "auto"):
        files["prompts_file"] = inputs["prompt_source"]
    config = {
        "classes": sorted(c.lower() for c in inputs["classes"]),
        "prompt_source": "file" if "prompts_file" in files else inputs["prompt_source"],
        "min_area": inputs["min_area"],
    }
    return files, config


@task(
    name="binarize-gt",
    task_run_name="gt-{frame[image_id]}",
    cache_policy=StageCachePolicy(stage="gt", key_inputs=_key_inputs),
    **STAGE_OPTIONS,
)
def binarize_gt(
    frame: dict[str, Any],
    classes: list[str],
    prompt_source: str,
    min_area: int,
    cache_dir: str,
) -> dict[str, Any]:
    """Write the binarized GT mask and instance table; return them with the frame's prompts."""
    files, config = _key_inputs(locals())
    timing: dict[str, Any] = {}

    def compute(out: Path) -> dict[str, Any]:
        parsed = frame_from_dict(frame)
        class_mask = cityscapes.load_binary_gt(parsed, classes)
        instances = cityscapes.load_instances(parsed, classes)
        file_prompts = load_prompts_file(files["prompts_file"]) if "prompts_file" in files else None
        prompts = frame_prompts(
            parsed, instances, prompt_source, class_mask.shape, file_prompts, min_area
        )
        table = [
            {
                "instance_id": i.instance_id,
                "class": i.class_name,
                "box": list(i.box),
                "area": i.area,
            }
            for i in instances
        ]
        return {
            "outputs": {
                "gt_mask": str(write_png(out / "gt_mask.png", class_mask)),
                "instances": str(write_json_atomic(out / "instances.json", table)),
            },
            "height": int(class_mask.shape[0]),
            "width": int(class_mask.shape[1]),
            "gt_area": int(class_mask.sum()),
            "prompts": [p.as_dict() for p in prompts],
        }

    with timed(timing):
        record = run_stage("gt", cache_dir, files, config, compute)
    return {**record, **timing}
