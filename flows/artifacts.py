"""Prefect artifacts of a dataset run: metrics table, markdown summary, links to outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from segstyle_core.results import COLUMNS

_TABLE_COLUMNS = [
    "image_id",
    "prompt_index",
    "instance_class",
    "iou",
    "dice",
    "iou_instance",
    "status",
    "error",
]


def _key(text: str) -> str:
    """Artifact keys allow lower-case letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:60]


def summary_markdown(frame: pd.DataFrame, parquet_path: str, title: str) -> str:
    """The run summary: counts, mean IoU and Dice, failures with their errors."""
    images = frame["image_id"].nunique()
    failed = frame.loc[frame["status"] == "failed", ["image_id", "error"]].drop_duplicates()
    lines = [
        f"# {title}",
        "",
        f"- images: **{images}**, rows: {len(frame)}, failed images: **{len(failed)}**",
        f"- mean IoU: **{frame['iou'].mean():.3f}**, mean Dice: **{frame['dice'].mean():.3f}**",
        f"- mean instance IoU: {frame['iou_instance'].mean():.3f}",
        f"- Parquet: `{parquet_path}`",
    ]
    if len(failed):
        lines += ["", "## Failures", "", "| image | error |", "|---|---|"]
        lines += [
            f"| {r.image_id} | {str(r.error).replace('|', '/')} |" for r in failed.itertuples()
        ]
    return "\n".join(lines)


def publish_artifacts(
    rows: list[dict[str, Any]], parquet_path: str, run_name: str, report: Path
) -> None:
    """Create the table, markdown and link artifacts of a run (inside a flow run)."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    key = _key(f"segstyle-{run_name}")
    table = frame.reindex(columns=_TABLE_COLUMNS).astype(object)
    create_table_artifact(
        table=table.where(table.notna(), None).to_dict(orient="records"),
        key=f"{key}-metrics",
        description="Per-image, per-prompt mask scores",
    )
    create_markdown_artifact(
        summary_markdown(frame, parquet_path, f"segstyle run {run_name}"),
        key=f"{key}-summary",
        description="Run summary",
    )
    create_link_artifact(
        link=report.resolve().as_uri(),
        link_text=f"report of {run_name}",
        key=f"{key}-report",
        description="Static HTML report: summary, IoU histograms, best/worst panels, failures",
    )
    create_markdown_artifact(
        outputs_markdown(frame),
        key=f"{key}-outputs",
        description="Links to each image's outputs",
    )


def outputs_markdown(frame: pd.DataFrame) -> str:
    """A table with one line per image and links to its composite, stylized image and mask."""
    columns = [
        c for c in ("composite_path", "stylized_path", "mask_path", "panel_path") if c in frame
    ]
    lines = ["| image | " + " | ".join(c.removesuffix("_path") for c in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for image_id, group in frame.groupby("image_id", sort=True):
        first = group.iloc[0]
        cells = [
            f"[{c.removesuffix('_path')}]({Path(first[c]).resolve().as_uri()})"
            if isinstance(first[c], str)
            else "-"
            for c in columns
        ]
        lines.append(f"| {image_id} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
