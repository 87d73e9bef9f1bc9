"""Prefect artifacts of a dataset run (rendered by :mod:`segstyle_core.run_summary`).

Links point at ``segstyle serve`` when the server the setting names serves the run's ``out``
(:mod:`segstyle_core.outputs`); else file paths (browsers refuse ``file://`` links from the
UI). A retry updates its run's artifacts in place: the Artifacts tab lists every version of a
key, so new versions would show each artifact once per attempt.
"""

from __future__ import annotations

import json
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

#: Artifact kind -> its description.
DESCRIPTIONS = {
    "metrics": "Per-image, per-prompt mask scores (failed images first)",
    "summary": "Run summary: headline IoU, worst images, failures",
    "report": "Static HTML report: summary, IoU histograms, best/worst panels, failures",
    "outputs": "Links to each image's outputs",
}


def artifact_key(run_name: str, flow_run_id: str | None, kind: str) -> str:
    """``segstyle-<run name>-<first 8 of the flow run id>-<kind>``, stable across retries, in
    the characters keys allow (lower-case letters, digits, dashes)."""
    parts = ["segstyle", run_name, (flow_run_id or "")[:8], kind]
    text = "-".join(p for p in parts if p).lower()
    return re.sub(r"-+", "-", "".join(c if c.isalnum() and c.isascii() else "-" for c in text))[
        :100
    ].strip("-")


def links_for(out_root: Path) -> LinkTarget:
    """Where the artifacts of a run writing to ``out_root`` link: ``SEGSTYLE_OUTPUTS_URL``,
    else the Prefect Variable ``segstyle-outputs-url``. A malformed setting logs a warning and
    gives file paths (the run's work is done: it does not fail it); the hint, if any, is
    logged."""
    from prefect.logging import get_run_logger
    from prefect.variables import Variable

    variable = f"Prefect Variable {OUTPUTS_URL_VARIABLE}"
    try:
        configured = outputs_url() or check_outputs_url(
            str(Variable.get(OUTPUTS_URL_VARIABLE, default=None) or ""), variable
        )
        target = link_target(out_root, configured)
    except ConfigError as exc:
        get_run_logger().warning("%s; the artifacts show file paths instead of links", exc)
        return LinkTarget(None)
    if target.hint:
        get_run_logger().info("%s", target.hint)
    return target


def _upsert(
    client: Any,
    flow_run_id: str | None,
    key: str,
    kind: str,
    data: str,
    description: str,
) -> str:
    """Update this flow run's artifact ``key`` in place (deleting older duplicates), or create
    it; return its id."""
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
    rows: list[dict[str, Any]], parquet_path: str, run_name: str, report: Path, out_root: Path
) -> dict[str, str]:
    """Create or update the current flow run's artifacts ``...-metrics`` (table),
    ``...-summary``, ``...-report`` (a link to ``report``) and ``...-outputs`` (each image's
    files); return key -> artifact id. ``rows`` have :data:`segstyle_core.results.COLUMNS`;
    ``out_root`` is the flows' ``out`` folder.
    """
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    report, root = Path(report), Path(out_root)
    flow_run_id = str(flow_run.get_id()) if flow_run.get_id() else None
    links = links_for(root)
    url = links.base_url
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    title, hint = f"segstyle run {run_name}", links.hint
    summary = summary_markdown(
        frame, parquet_path, title, out_root=root, report=report, base_url=url, link_hint=hint
    )
    artifacts = {
        "metrics": ("table", json.dumps(table_records(frame))),
        "summary": ("markdown", summary),
        "report": ("markdown", report_markdown(report, root, run_name, url)),
        "outputs": ("markdown", outputs_markdown(frame, root, url)),
    }
    ids = {}
    with get_client(sync_client=True) as client:
        for kind, (artifact_type, data) in artifacts.items():
            key = artifact_key(run_name, flow_run_id, kind)
            ids[key] = _upsert(client, flow_run_id, key, artifact_type, data, DESCRIPTIONS[kind])
    return ids
