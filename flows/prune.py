"""The ``prune_outputs`` flow: ``segstyle prune`` as a deployment."""

from __future__ import annotations

from prefect import flow, get_run_logger

from segstyle_core.retention import prune


@flow(name="prune_outputs", persist_result=False)
def prune_outputs(out: str = "artifacts", keep: int = 14) -> int:
    """Keep the ``keep`` latest runs of each flow under ``out`` (Parquet files and run folders),
    removing older ones but never the stage cache; return how many were removed.

    Args:
        out: the flows' output folder.
        keep: runs to keep per flow, the latest started.
    """
    pruned = prune(out, keep)
    logger = get_run_logger()
    for run in pruned.runs:
        logger.info("removed run %s", run)
    logger.info("removed %d runs; kept the latest %d of each flow", len(pruned.runs), keep)
    return len(pruned.runs)
