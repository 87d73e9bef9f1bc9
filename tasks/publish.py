"""Task: copy an image's outputs from the content-addressed cache into the run directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from prefect import task

from segstyle_core.fileio import atomic_write_with


def _link_or_copy(source: str, target: Path) -> Path:
    """Hard-link ``source`` to ``target`` (copy across file systems), replacing atomically."""

    def place(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    return atomic_write_with(target, place)


@task(name="publish", task_run_name="publish-{image_id}", retries=2, retry_delay_seconds=1)
def publish(
    image_id: str, run_dir: str, records: dict[str, dict[str, Any] | None]
) -> dict[str, str]:
    """Place each stage's output PNGs in ``<run_dir>/<image_id>/``; return column -> path.

    Returns keys of :data:`segstyle_core.results.SCHEMA`: ``mask_path``, ``stylized_path``,
    ``composite_path``, ``panel_path`` (those that exist).
    """
    wanted = {
        "mask_path": ("metrics", "mask"),
        "stylized_path": ("stylize", "stylized"),
        "composite_path": ("composite", "composite"),
        "panel_path": ("figures", "panel"),
    }
    folder = Path(run_dir) / image_id
    placed = {}
    for column, (stage, output) in wanted.items():
        record = records.get(stage)
        if record and output in record["outputs"]:
            target = folder / f"{output}.png"
            placed[column] = str(_link_or_copy(record["outputs"][output], target))
    return placed
