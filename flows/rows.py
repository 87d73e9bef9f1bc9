"""Assemble Parquet rows (see :data:`segstyle_core.results.SCHEMA`) from stage records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segstyle_core.backends import BackendIdentity
from segstyle_core.cityscapes import Frame
from segstyle_core.config import DatasetSelection
from segstyle_core.fileio import file_sha256, sha256_json
from segstyle_core.stagecache import StageRecord
from segstyle_core.stages.gt import GtRecord
from segstyle_core.stages.metrics import MetricsRecord
from segstyle_core.stylize import StylizerConfig

#: Stages that contribute ``seconds_<stage>`` and ``cached_<stage>`` columns.
TIMED_STAGES = ("gt", "segment", "stylize", "composite", "figures")


def run_columns(
    *,
    run_name: str,
    flow_run_id: str,
    dataset: DatasetSelection,
    config: Mapping[str, Any],
    segmenter: BackendIdentity,
    stylizer: tuple[StylizerConfig, BackendIdentity] | None,
    mode: str,
    started: dt.datetime,
) -> dict[str, Any]:
    """The columns every row of a run shares: ids, backends, style, mode, config hash."""
    columns: dict[str, Any] = {
        "run_id": run_name,
        "flow_run_id": flow_run_id,
        "split": dataset.split,
        "classes": ",".join(sorted(c.lower() for c in dataset.classes)),
        "segmenter": segmenter.name,
        "segmenter_variant": segmenter.variant,
        "segmenter_weights_sha256": segmenter.weights_sha256,
        "mode": mode if stylizer else None,
        "config_sha256": sha256_json(config),
        "started_at": started,
    }
    if stylizer is not None:
        settings, identity = stylizer
        style = settings.style_path()
        columns.update(
            stylizer=identity.name,
            stylizer_variant=identity.variant,
            stylizer_weights_sha256=identity.weights_sha256,
            style_name=Path(style).stem,
            style_sha256=file_sha256(style),
        )
    return columns


def _prompt_columns(prompt: Mapping[str, Any] | None) -> dict[str, Any]:
    if prompt is None:
        return {}
    labels = prompt.get("point_labels") or []
    return {
        "prompt_kind": prompt["kind"] if prompt.get("box") or prompt.get("points") else "auto",
        "prompt_box": prompt.get("box"),
        "prompt_points": [
            [*p, lab] for p, lab in zip(prompt.get("points", []), labels, strict=False)
        ],
        "instance_id": prompt.get("instance_id"),
        "instance_class": prompt.get("class_name"),
    }


def frame_rows(
    common: Mapping[str, Any],
    frame: Frame,
    records: Mapping[str, StageRecord],
    error: str | None,
    published: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Rows of one image: one per scored prompt, or a single row when there is none.

    Args:
        common: run-wide columns (:func:`run_columns`, plus timestamps); the city is the
            frame's own (a run may cover several cities).
        records: stage name -> record of each stage that completed.
        error: the first failing stage's error, which makes the rows ``failed``.
        published: :func:`segstyle.tasks.publish.publish` output: path columns -> files in the
            run directory.
    """
    base = {
        **common,
        "city": frame.city,
        "image_id": frame.image_id,
        "image_path": str(frame.image_path),
        **(published or {}),
        "status": "failed" if error else "ok",
        "error": error,
    }
    for stage in TIMED_STAGES:
        if stage in records:
            base[f"seconds_{stage}"] = records[stage].seconds
            base[f"cached_{stage}"] = records[stage].cached
    gt = records.get("gt")
    if isinstance(gt, GtRecord):
        base["gt_area"] = gt.gt_area
    metrics = records.get("metrics")
    if error is not None or not isinstance(metrics, MetricsRecord) or not metrics.scores:
        return [base]
    return [
        {
            **base,
            "prompt_index": index,
            **_prompt_columns(score.get("prompt")),
            **{k: v for k, v in score.items() if k != "prompt"},
        }
        for index, score in enumerate(metrics.scores)
    ]
