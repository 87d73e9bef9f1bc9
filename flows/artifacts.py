"""Prefect artifacts of a dataset run: metrics table, markdown summary, report and output links
(rendered by :mod:`segstyle_core.run_summary`).

Links point at ``segstyle serve`` when the server that the setting names (``SEGSTYLE_OUTPUTS_URL``,
else the Prefect Variable ``segstyle-outputs-url``, else 127.0.0.1:4201) says it serves the
run's ``out`` folder (see :mod:`segstyle_core.outputs`); only then does the summary show the
worst images as thumbnails. Otherwise the artifacts show plain file paths, since the UI's
browser refuses ``file://`` links, and the summary one line saying how to get links.

One set per flow run: the keys are built from the run name and the flow run id, and a second
:func:`publish_artifacts` in the same flow run (a retry) updates those artifacts in place
(``PATCH /artifacts/{id}``) instead of creating new versions. A flow run's Artifacts tab lists
*every* artifact of the run, all versions of a key included, so plain keyed creation would show
each artifact once per attempt.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd

from segstyle_core.errors import ConfigError
from segstyle_core.outputs import (
    OUTPUTS_URL_VARIABLE,
    LinkTarget,
    check_outputs_url,
    link_target,
    outputs_url,
)
from segstyle_core.results import COLUMNS
from segstyle_core.run_summary import (
    outputs_markdown,
    report_markdown,
    summary_markdown,
    table_records,
)

_log = logging.getLogger(__name__)


def artifact_key(run_name: str, flow_run_id: str | None, kind: str) -> str:
    """``segstyle-<run name>-<first 8 of the flow run id>-<kind>``: stable across retries.

    Keys allow lower-case letters, digits and dashes; other characters become dashes.
    """
    parts = ["segstyle", run_name, (flow_run_id or "")[:8], kind]
    text = "-".join(p for p in parts if p).lower()
    return re.sub(r"-+", "-", "".join(c if c.isalnum() and c.isascii() else "-" for c in text))[
        :100
    ].strip("-")


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The flow run's logger inside a flow run, else this module's."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return _log


def configured_outputs_url() -> str | None:
    """The outputs server's address: ``SEGSTYLE_OUTPUTS_URL``, else the Prefect Variable
    ``segstyle-outputs-url``, else ``None``.

    Raises:
        ConfigError: the value is not an http(s) URL.
    """
    from prefect.variables import Variable

    configured = outputs_url()
    if configured is not None:
        return configured
    value = Variable.get(OUTPUTS_URL_VARIABLE, default=None)
    return check_outputs_url(str(value or ""), f"Prefect Variable {OUTPUTS_URL_VARIABLE}")


def links_for(out_root: Path) -> LinkTarget:
    """Where the artifacts of a run writing to ``out_root`` link (see
    :func:`segstyle_core.outputs.link_target`). A malformed setting gives a warning and plain
    paths (the run's work is done by now; its artifacts fall back to file paths rather than
    failing it). The hint, when there is one, is logged once."""
    try:
        target = link_target(out_root, configured_outputs_url())
    except ConfigError as exc:
        _run_logger().warning("%s; the artifacts show file paths instead of links", exc)
        return LinkTarget(None)
    if target.hint:
        _run_logger().info("%s", target.hint)
    return target


def _upsert(
    client: Any,
    flow_run_id: str | None,
    key: str,
    kind: str,
    data: str,
    description: str,
) -> str:
    """Update this flow run's artifact ``key`` in place, or create it; return its id.

    Older duplicates of the key in the same flow run (from before this function) are deleted,
    so the run shows one artifact per key.
    """
    from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    run_id = UUID(flow_run_id) if flow_run_id is not None else None
    existing = []
    if run_id is not None:
        existing = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
    if existing:
        newest, *older = existing
        client.update_artifact(newest.id, ArtifactUpdate(data=data, description=description))
        for artifact in older:
            client.delete_artifact(artifact.id)
        return str(newest.id)
    created = client.create_artifact(
        ArtifactCreate(key=key, type=kind, data=data, description=description, flow_run_id=run_id)
    )
    return str(created.id)


def publish_artifacts(
    rows: list[dict[str, Any]],
    parquet_path: str,
    run_name: str,
    report: Path,
    out_root: str | Path | None = None,
    *,
    flow_run_id: str | None = None,
) -> dict[str, str]:
    """Create or update the run's four artifacts (inside a flow run); return key -> artifact id.

    Args:
        rows: the run's result rows (columns of :data:`segstyle_core.results.SCHEMA`).
        parquet_path: the run's Parquet file.
        run_name: the flow run's name.
        report: the run's ``report.html``.
        out_root: the flows' ``out`` folder, one that ``segstyle serve --out`` serves for
            links; default: the folder holding ``runs/`` above ``report``.
        flow_run_id: default: the current flow run's id.

    Artifacts: ``...-metrics`` (table), ``...-summary`` (markdown), ``...-report`` (link to
    report.html), ``...-outputs`` (markdown table of each image's files).
    """
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    report = Path(report)
    root = Path(out_root) if out_root is not None else _default_root(report)
    if flow_run_id is None:
        current = flow_run.get_id()
        flow_run_id = str(current) if current else None
    links = links_for(root)
    base_url = links.base_url
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    artifacts = [
        (
            "metrics",
            "table",
            json.dumps(table_records(frame)),
            "Per-image, per-prompt mask scores (failed images first)",
        ),
        (
            "summary",
            "markdown",
            summary_markdown(
                frame,
                parquet_path,
                f"segstyle run {run_name}",
                out_root=root,
                report=report,
                base_url=base_url,
                link_hint=links.hint,
            ),
            "Run summary: headline IoU, worst images, failures",
        ),
        (
            "report",
            "markdown",
            report_markdown(report, root, run_name, base_url),
            "Static HTML report: summary, IoU histograms, best/worst panels, failures",
        ),
        (
            "outputs",
            "markdown",
            outputs_markdown(frame, root, base_url),
            "Links to each image's outputs",
        ),
    ]
    ids = {}
    with get_client(sync_client=True) as client:
        for kind, artifact_type, data, description in artifacts:
            key = artifact_key(run_name, flow_run_id, kind)
            ids[key] = _upsert(client, flow_run_id, key, artifact_type, data, description)
    return ids


def _default_root(report: Path) -> Path:
    """``<out>`` of ``<out>/runs/<run name>/report.html``; else the report's folder."""
    run_dir = report.resolve().parent
    return run_dir.parent.parent if run_dir.parent.name == "runs" else run_dir
