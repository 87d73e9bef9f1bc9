"""Retention of an output folder: keep the latest runs, remove the rest (``segstyle prune``).

A run is its Parquet file ``<out>/metrics/flow=<flow>/<flow_run_id>.parquet`` and its run
folder ``<out>/runs/<run>/``. Unfinished runs (:func:`~segstyle_core.results.partial_runs`) and
the stage cache are never touched, nor anything but folders directly inside ``<out>/runs``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from segstyle_core import results
from segstyle_core.errors import ConfigError
from segstyle_core.outputs import PUBLISHED


@dataclass
class Pruned:
    """What :func:`prune` removed (or, with ``dry_run``, would remove)."""

    runs: list[str] = field(default_factory=list)  # "<run name> (<flow run id>, <flow>)"
    files: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)


def _run_folders(rows: pd.DataFrame, runs_dir: Path) -> set[Path]:
    """The folders directly inside ``runs_dir`` that hold the rows' pictures."""
    texts = rows[list(PUBLISHED)].melt()["value"].dropna().unique()  # the pictures' columns
    paths = (Path(str(text)).resolve() for text in texts)
    parts = [path.relative_to(runs_dir).parts for path in paths if path.is_relative_to(runs_dir)]
    return {runs_dir / part[0] for part in parts if len(part) >= 2}


def prune(out: str | os.PathLike[str], keep: int, *, dry_run: bool = False) -> Pruned:
    """Keep the ``keep`` runs of each flow under ``out`` started last; remove the older runs'
    Parquet files and run folders. :class:`ConfigError` for ``keep`` below 1;
    :class:`SegstyleError` when ``out`` holds no metrics folder."""
    if keep < 1:
        raise ConfigError(f"keep={keep}: keep at least the latest run (1)")
    root = Path(out)
    metrics, runs_dir = root / "metrics", (root / "runs").resolve()
    rows = results.read_metrics(metrics)
    busy = {run.flow_run_id for run in results.partial_runs(metrics)}
    pruned = Pruned()
    for flow_dir in sorted(metrics.glob("flow=*")):
        flow = flow_dir.name.removeprefix("flow=")
        files = {p.stem: p for p in flow_dir.glob("*.parquet") if p.is_file()}
        ran = rows[rows["flow_run_id"].isin(files.keys() - busy)]
        started = ran.groupby("flow_run_id")["started_at"].min().sort_values(kind="stable")
        kept = set(started.index[-keep:])
        kept_folders = _run_folders(rows[rows["flow_run_id"].isin(kept | busy)], runs_dir)
        for run_id in started.index[:-keep]:
            run_rows = ran[ran["flow_run_id"] == run_id]
            pruned.runs.append(f"{run_rows['run_id'].iloc[0]} ({run_id}, {flow})")
            pruned.files.append(files[run_id])
            pruned.folders += sorted(_run_folders(run_rows, runs_dir) - kept_folders)
    if not dry_run:
        for file in pruned.files:
            file.unlink(missing_ok=True)
        for folder in pruned.folders:
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
    return pruned
