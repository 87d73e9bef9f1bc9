"""Where a dataset run's tasks execute (:func:`task_runner`); Dask workers must see the same
``--out`` (a dead worker's tasks rerun elsewhere: finished stages are cache hits)."""

from __future__ import annotations

import os
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

DASK_ADDRESS_ENV = "SEGSTYLE_DASK_ADDRESS"
#: Task-runner threads without Dask (heavy stages still run one at a time per device).
THREADS = 4


def task_runner(dask: str | None = None, workers: int | None = None) -> TaskRunner[Any]:
    """Dask at ``dask`` or ``$SEGSTYLE_DASK_ADDRESS``, else ``workers`` local ones, else threads."""
    address = dask or os.environ.get(DASK_ADDRESS_ENV) or None
    if address is None and not workers:
        return ThreadPoolTaskRunner(max_workers=THREADS)
    from prefect_dask import DaskTaskRunner

    if address is not None:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
    )
