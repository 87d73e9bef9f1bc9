"""Assemble Parquet rows (see :data:`segstyle_core.results.SCHEMA`) from stage records."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from segstyle_core.backends import BackendIdentity
from segstyle_core.cityscapes import Frame
from segstyle_core.config import DatasetSelection
from segstyle_core.fileio import file_sha256, sha256_json
from segstyle_core.results import TIMED_STAGES
from segstyle_core.stagecache import StageRecord
from segstyle_core.stages.gt import GtRecord
from segstyle_core.stages.metrics import MetricsRecord
from segstyle_core.stylize import StylizerConfig


def run_columns(
    *,
    run_name: str,
    flow_run_id: str,
    dataset: DatasetSelection,
    config: Mapping[str, Any],
    segmenter: BackendIdentity,
    stylizer: BackendIdentity | None,
    mode: str,
    started: dt.datetime,
) -> dict[str, Any]:
    """The columns every row of a run shares: ids, backends, mode, config hash."""
    columns: dict[str, Any] = {
        "run_id": run_name,
        "flow_run_id": flow_run_id,
        "split": dataset.split,
        "classes": ",".join(sorted(c.lower() for c in dataset.classes)),
        "mode": mode if stylizer else None,
        "config_sha256": sha256_json(config),
        "started_at": started,
    }
    for role, backend in (("segmenter", segmenter), ("stylizer", stylizer)):
        if backend is not None:
            columns[role] = backend.name
            columns[f"{role}_variant"] = backend.variant
            columns[f"{role}_weights_sha256"] = backend.weights_sha256
    return columns


StyleColumns = Callable[[str | None], dict[str, Any]]


def style_columns(stylizer: StylizerConfig) -> StyleColumns:
    """``class name (None: none) -> {"style_name", "style_sha256"}`` of the style that paints
    that class (:meth:`StylizerConfig.style_for`); each distinct file is hashed once."""

    @functools.cache
    def columns(style: str) -> dict[str, Any]:
        return {"style_name": Path(style).stem, "style_sha256": file_sha256(style)}

    return lambda class_name: columns(stylizer.style_for(class_name))


def _timing(records: Mapping[str, StageRecord], stage: str) -> dict[str, Any]:
    """``seconds_<stage>`` (summed over the stage's runs, e.g. every style) and ``cached_<stage>``
    (all were hits); empty when the stage did not complete."""
    runs = [r for name, r in records.items() if name == stage or name.startswith(f"{stage}_")]
    if not runs:
        return {}
    return {
        f"seconds_{stage}": sum(r.seconds for r in runs),
        f"cached_{stage}": all(r.cached for r in runs),
    }


def _prompt_columns(prompt: Mapping[str, Any]) -> dict[str, Any]:
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
    style_of: StyleColumns | None = None,
) -> list[dict[str, Any]]:
    """Rows of one image: one per scored prompt, else one. ``common``: :func:`run_columns` plus
    timestamps; ``records``: stage name -> record of each completed stage; ``error`` (the first
    failing stage's) makes the rows ``failed``; ``published``: path columns."""
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
        base.update(_timing(records, stage))
    if style_of is not None:
        base.update(style_of(None))
    if isinstance(gt := records.get("gt"), GtRecord):
        base["gt_area"] = gt.gt_area
    metrics = records.get("metrics")
    if error is not None or not isinstance(metrics, MetricsRecord) or not metrics.scores:
        return [base]
    return [
        {
            **base,
            "prompt_index": index,
            **_prompt_columns(score["prompt"]),
            **(style_of(score["prompt"].get("class_name")) if style_of is not None else {}),
            **{k: v for k, v in score.items() if k != "prompt"},
        }
        for index, score in enumerate(metrics.scores)
    ]
