"""Test helpers over the core's public API."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segstyle_core import results


def write_run(
    rows: Sequence[Mapping[str, Any]],
    metrics_dir: str | os.PathLike[str],
    flow_name: str,
    flow_run_id: str,
) -> Path:
    """Write (or replace) one flow run's Parquet file the way the flows do: through
    :class:`~segstyle_core.results.RunRows`, one part per ``image_id`` (rows grouped in order),
    then :meth:`~segstyle_core.results.RunRows.compact`. Returns the run's file."""
    by_image: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_image.setdefault(row["image_id"], []).append(row)
    with results.RunRows(metrics_dir, flow_name, flow_run_id) as durable:
        for image_id, image_rows in by_image.items():
            durable.write_image(image_id, image_rows)
        return durable.compact()
