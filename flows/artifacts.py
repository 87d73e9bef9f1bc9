"""Prefect artifacts of a dataset run (:mod:`segstyle_core.run_summary`), linking to ``segstyle
serve`` when it serves the run's ``out``, else showing file paths; a retry updates them in place.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.variables import Variable

from segstyle_core import run_summary
from segstyle_core.errors import ConfigError
from segstyle_core.outputs import (
    OUTPUTS_URL_ENV,
    OUTPUTS_URL_VARIABLE,
    LinkTarget,
    check_outputs_url,
    link_target,
    outputs_url,
)
from segstyle_core.results import COLUMNS

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
    return re.sub(r"[^a-z0-9]+", "-", text)[:100].strip("-")


def links_for(out_root: Path) -> LinkTarget:
    """Where the artifacts link: ``SEGSTYLE_OUTPUTS_URL``, else the Prefect Variable; a malformed
    setting logs a warning and gives file paths (the run's work is done)."""
    variable = f"Prefect Variable {OUTPUTS_URL_VARIABLE}"
    try:
        configured = outputs_url() or check_outputs_url(
            str(Variable.get(OUTPUTS_URL_VARIABLE, default=None) or ""), variable
        )
        return link_target(out_root, configured)
    except ConfigError as exc:
        get_run_logger().warning("%s; the artifacts show file paths instead of links", exc)
        return LinkTarget(None)


def link_hint(target: LinkTarget, out_root: Path) -> str | None:
    """The line saying how to get links to ``out_root``'s files; ``None``: they are linked."""
    if target.base_url is not None or target.asked is None:
        return None
    out, setting = out_root.resolve(), f"the Prefect Variable {OUTPUTS_URL_VARIABLE}"
    flag = f"--out {shlex.quote(str(out))}"
    run = f"run segstyle serve {flag} and set {setting} (or {OUTPUTS_URL_ENV}) to its address"
    if target.served:
        listed = ", ".join(map(str, target.served))
        why = f"the segstyle serve at {target.asked} serves {listed}, not {out}; add {flag} to it"
        return f"no links: {why} (or {run})"
    return f"no links: no segstyle serve answers at {target.asked}; {run}"


def _upsert(client: SyncPrefectClient, artifact: ArtifactCreate) -> str:
    """Update the flow run's artifact ``artifact.key`` (deleting older duplicates), or create
    it; return its id."""
    existing = []
    if artifact.key and artifact.flow_run_id is not None:
        existing = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact.key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[artifact.flow_run_id]),
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
    if not existing:
        return str(client.create_artifact(artifact).id)
    newest, *older = existing
    update = ArtifactUpdate(data=artifact.data, description=artifact.description)
    client.update_artifact(newest.id, update)
    for duplicate in older:
        client.delete_artifact(duplicate.id)
    return str(newest.id)


def publish_artifacts(
    rows: list[dict[str, Any]], parquet_path: str, run_name: str, report: Path, out_root: Path
) -> dict[str, str]:
    """Create or update the flow run's artifacts (:data:`DESCRIPTIONS`) from ``rows`` (of
    :data:`segstyle_core.results.COLUMNS`); return key -> artifact id."""
    flow_run_id = flow_run.get_id() or None
    run_id = UUID(flow_run_id) if flow_run_id else None
    links = links_for(out_root)
    url, frame = links.base_url, pd.DataFrame(rows, columns=list(COLUMNS))
    title, hint = f"segstyle run {run_name}", link_hint(links, out_root)
    if hint:
        get_run_logger().info("%s", hint)
    summary = run_summary.summary_markdown(
        frame, parquet_path, title, out_root=out_root, report=report, base_url=url, link_hint=hint
    )
    artifacts = {  # kind -> (artifact type, data)
        "metrics": ("table", json.dumps(run_summary.table_records(frame))),
        "summary": ("markdown", summary),
        "report": ("markdown", run_summary.report_markdown(report, out_root, run_name, url)),
        "outputs": ("markdown", run_summary.outputs_markdown(frame, out_root, url)),
    }
    ids = {}
    with get_client(sync_client=True) as client:
        for kind, (form, data) in artifacts.items():
            key = artifact_key(run_name, flow_run_id, kind)
            artifact = ArtifactCreate(
                key=key, type=form, data=data, description=DESCRIPTIONS[kind], flow_run_id=run_id
            )
            ids[key] = _upsert(client, artifact)
    return ids
