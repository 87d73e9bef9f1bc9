"""Task: composite the stylized image into the original inside (or outside) the mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from segstyle_core.composite import composite as composite_images
from segstyle_core.images import read_mask, read_rgb, write_png
from segstyle_core.stagecache import run_stage
from tasks.caching import StageCachePolicy
from tasks.common import STAGE_OPTIONS, timed


def _key_inputs(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    files = {
        "image": inputs["image_path"],
        "stylized": inputs["stylize_record"]["outputs"]["stylized"],
        "mask": inputs["mask_record"]["outputs"]["mask"],
    }
    config = {k: inputs[k] for k in ("mode", "feather_px", "preserve_color")}
    return files, config


@task(
    name="composite",
    task_run_name="composite-{image_id}",
    cache_policy=StageCachePolicy(stage="composite", key_inputs=_key_inputs),
    **STAGE_OPTIONS,
)
def composite(
    image_id: str,
    image_path: str,
    stylize_record: dict[str, Any],
    mask_record: dict[str, Any],
    mode: str,
    feather_px: float,
    preserve_color: str | None,
    cache_dir: str,
) -> dict[str, Any]:
    """Write ``composite.png``: the stylized image resized back and kept inside/outside the mask.

    ``stylize_record`` is the stylize task's record (``outputs["stylized"]``); ``mask_record``
    names the mask to use in ``outputs["mask"]`` (the segment task's union of prompt masks,
    or the metrics task's selection in automatic mode).
    """
    files, config = _key_inputs(locals())
    timing: dict[str, Any] = {}

    def compute(out: Path) -> dict[str, Any]:
        result = composite_images(
            read_rgb(image_path),
            read_rgb(files["stylized"]),
            read_mask(files["mask"]),
            mode=mode,  # type: ignore[arg-type]
            feather_px=feather_px,
            preserve_color=preserve_color,  # type: ignore[arg-type]
        )
        return {"outputs": {"composite": str(write_png(out / "composite.png", result))}}

    with timed(timing):
        record = run_stage("composite", cache_dir, files, config, compute)
    return {**record, **timing}
