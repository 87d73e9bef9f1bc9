"""Where a dataset run's tasks execute: threads of this process, or a Dask cluster.

* default: :data:`THREADS` task-runner threads in the flow's process; heavy stages still take
  the machine's device slot one at a time (``segstyle.tasks.device_slots``).
* an existing cluster: its scheduler's address, from ``segstyle run --dask ADDRESS`` or, for
  deployments, the ``SEGSTYLE_DASK_ADDRESS`` environment variable (a work pool's or a
  deployment's ``job_variables.env``). Workers on other machines must see the same ``--out``
  (a shared file system): stage results and Parquet parts are written there with atomic
  renames and content addresses, never with locks that would need one host.
* a local cluster of ``N`` worker processes with one thread each (``--workers N``), started
  for the run and closed after it.

A worker that dies mid-run loses nothing: Dask runs its tasks again on another worker, and
every stage is cached by its inputs, so a rerun of a stage that had finished is a cache hit and
each image still gets its rows once.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

#: The environment variable naming a Dask scheduler for runs that get no ``--dask``.
DASK_ADDRESS_ENV = "SEGSTYLE_DASK_ADDRESS"
#: Task-runner threads without Dask (heavy stages still run one at a time per device).
THREADS = 4


def task_runner(dask: str | None = None, workers: int | None = None) -> TaskRunner[Any]:
    """The task runner of a dataset run: ``dask`` (a scheduler address, else
    ``$SEGSTYLE_DASK_ADDRESS``), else a local cluster of ``workers`` processes, else threads.
    """
    address = dask or os.environ.get(DASK_ADDRESS_ENV) or None
    if address is None and not workers:
        return ThreadPoolTaskRunner(max_workers=THREADS)
    from prefect_dask import DaskTaskRunner

    if address is not None:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
    )
