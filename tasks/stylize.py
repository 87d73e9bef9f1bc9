"""Task: stylize one image (the whole frame, or only a region of interest around the mask)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from segstyle_core.devices import memory_guard
from segstyle_core.images import read_mask, read_rgb, write_png
from segstyle_core.roi import stylize_roi
from segstyle_core.stagecache import run_stage
from segstyle_core.stylize import Progress, build_stylizer, stylizer_identity
from tasks.caching import StageCachePolicy
from tasks.common import STAGE_OPTIONS, device_slot, timed


def _key_inputs(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    files = {"image": inputs["image_path"], "style": inputs["style_path"]}
    if inputs["roi_margin_px"] is not None:
        files["roi_mask"] = inputs["segment_record"]["outputs"]["mask"]
    spec = inputs["spec"]
    config = {
        "stylizer": stylizer_identity(spec),
        "options": spec.get("options", {}),
        "roi_margin_px": inputs["roi_margin_px"],
    }
    return files, config


@task(
    name="stylize",
    task_run_name="stylize-{image_id}",
    cache_policy=StageCachePolicy(stage="stylize", key_inputs=_key_inputs),
    **STAGE_OPTIONS,
)
def stylize(
    image_id: str,
    image_path: str,
    style_path: str,
    spec: dict[str, Any],
    cache_dir: str,
    segment_record: dict[str, Any] | None = None,
    roi_margin_px: int | None = None,
) -> dict[str, Any]:
    """Paint ``image_path`` in the style of ``style_path``; write ``stylized.png``.

    Whole frame by default (the seed's method, at the stylizer's working size). With
    ``roi_margin_px`` set, only the bounding box of ``segment_record``'s mask plus that margin
    is stylized and the result is full size (see :mod:`segstyle_core.roi`).
    """
    files, config = _key_inputs(locals())
    timing: dict[str, Any] = {}
    logger = get_run_logger()

    def report(progress: Progress) -> None:
        if progress.step == progress.total or progress.step % 25 == 0:
            terms = " ".join(f"{k}={v:.4g}" for k, v in progress.losses.items())
            logger.info("%s step %d/%d %s", image_id, progress.step, progress.total, terms)

    def compute(out: Path) -> dict[str, Any]:
        content = read_rgb(image_path)
        style = read_rgb(style_path)
        stylizer = build_stylizer(spec)
        what = f"{image_path}: stylizing {content.shape[1]}x{content.shape[0]}"
        with device_slot(spec["device"]), memory_guard(what):
            if roi_margin_px is None:
                result = stylizer.stylize(content, style, progress=report)
            else:
                mask = read_mask(files["roi_mask"])
                result = stylize_roi(
                    stylizer,
                    content,
                    style,
                    mask,
                    margin_px=roi_margin_px,
                    margin_pct=0.0,
                    progress=report,
                )
        return {
            "outputs": {"stylized": str(write_png(out / "stylized.png", result))},
            **config["stylizer"],
        }

    with timed(timing):
        record = run_stage("stylize", cache_dir, files, config, compute)
    return {**record, **timing}
