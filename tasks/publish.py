"""Task: copy an image's output pictures from the run's cache into the run directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from prefect import task

from segstyle_core.fileio import copy_atomic
from segstyle_core.stagecache import StageRecord

#: Parquet path column -> (stage, output) it publishes.
PUBLISHED = {
    "mask_path": ("metrics", "mask"),
    "stylized_path": ("stylize", "stylized"),
    "composite_path": ("composite", "composite"),
    "panel_path": ("figures", "panel"),
}


@task(
    name="publish",
    task_run_name="publish-{image_id}",
    retries=2,
    retry_delay_seconds=1,
    persist_result=False,
)
def publish(image_id: str, run_dir: str, records: Mapping[str, StageRecord]) -> dict[str, str]:
    """Copy each stage's output PNG to ``<run_dir>/<image_id>/<output>.png`` (copies: the run
    folder survives the cache's cleanup); return column -> path of :data:`PUBLISHED`."""
    folder = Path(run_dir) / image_id
    placed = {}
    for column, (stage, output) in PUBLISHED.items():
        record = records.get(stage)
        if record is not None and output in record.outputs:
            placed[column] = str(copy_atomic(record.path(output), folder / f"{output}.png"))
    return placed
