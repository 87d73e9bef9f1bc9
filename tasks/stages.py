"""The stage tasks of the image flows, one per stage of :mod:`segstyle_core.stages`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segstyle.tasks.stage import stage_task
from segstyle_core.stages import composite as composite_stage
from segstyle_core.stages import figures as figures_stage
from segstyle_core.stages import gt, metrics
from segstyle_core.stages import segment as segment_stage
from segstyle_core.stages import stylize as stylize_stage

binarize_gt = stage_task(gt.binarize_gt, "gt-{frame.image_id}")
segment = stage_task(segment_stage.segment, "segment-{image_id}")


def _stylize_run_name(parameters: dict[str, Any]) -> str:
    """``stylize-<image id>-<style file's stem>``: an image has one stylize run per style."""
    return f"stylize-{parameters['image_id']}-{Path(parameters['style_path']).stem}"


stylize = stage_task(stylize_stage.stylize, _stylize_run_name)
composite = stage_task(composite_stage.composite, "composite-{image_id}")
score_frame = stage_task(metrics.score_frame, "metrics-{frame.image_id}")
figures = stage_task(figures_stage.figures, "figures-{frame.image_id}")
