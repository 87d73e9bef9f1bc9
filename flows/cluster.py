"""Where a dataset run's tasks execute (:func:`task_runner`); Dask workers must see the same
``--out`` (a dead worker's tasks rerun elsewhere: finished stages are cache hits)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from segstyle.tasks.device_slots import dask_resources
from segstyle_core.errors import ConfigError

DASK_ADDRESS_ENV = "SEGSTYLE_DASK_ADDRESS"
#: Task-runner threads without Dask (heavy stages still run one at a time per device).
THREADS = 4
#: What a scheduler address looks like, for error messages.
ADDRESS_FORM = "HOST:PORT or tcp://HOST:PORT, e.g. tcp://127.0.0.1:8786"


def scheduler_address(dask: str | None = None) -> str | None:
    """The Dask scheduler's address: ``dask``, else ``$SEGSTYLE_DASK_ADDRESS``, else none."""
    return dask or os.environ.get(DASK_ADDRESS_ENV) or None


def task_runner(dask: str | None = None, workers: int | None = None) -> TaskRunner[Any]:
    """Dask at ``dask`` or ``$SEGSTYLE_DASK_ADDRESS``, else ``workers`` local ones, else threads."""
    address = scheduler_address(dask)
    if address is None and not workers:
        return ThreadPoolTaskRunner(max_workers=THREADS)
    from prefect_dask import DaskTaskRunner

    if address is not None:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
    )


def computes_here(runner: TaskRunner[Any]) -> bool:
    """Whether :func:`task_runner`'s ``runner`` computes on this machine: threads, or a Dask
    cluster it starts here; not a scheduler it connects to by address."""
    return getattr(runner, "address", None) is None


def check_cluster(dask: str | None, devices: Iterable[str]) -> None:
    """Before a run that goes to a scheduler by address (``dask``, else the variable): that it
    answers and offers what stages on ``devices`` need (:func:`check_scheduler`)."""
    address = scheduler_address(dask)
    if address is not None:
        resources: dict[str, float] = {}
        for device in devices:
            resources |= dask_resources(device)
        check_scheduler(address, "--dask" if dask else f"${DASK_ADDRESS_ENV}", resources)


def check_scheduler(address: str, source: str, resources: Mapping[str, float]) -> None:
    """:class:`ConfigError` naming ``source`` (the flag or variable that gave ``address``)
    unless ``address`` parses as Dask's, a scheduler answers there within Dask's connect
    timeout (``distributed.comm.timeouts.connect``, 30 s unless configured) and, when it has
    workers and the run's stages need ``resources`` (``{"GPU": 1}`` for CUDA), one of them
    offers those (Dask would hold such tasks until one joins)."""
    from distributed import Client
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address, strict=False)  # no scheme: tcp
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as error:
        raise ConfigError(
            f"{source} {address}: not a Dask scheduler address ({error}); give {ADDRESS_FORM}"
        ) from None
    try:
        with Client(address, set_as_default=False) as client:
            workers = list(client.scheduler_info()["workers"].values())
    except (OSError, ValueError) as error:
        reason = (str(error) or type(error).__name__).splitlines()[0].rstrip(".")
        raise ConfigError(
            f"{source} {address}: no Dask scheduler answered ({reason}); start one there "
            f"(`dask scheduler`), or give the address it prints ({ADDRESS_FORM})"
        ) from None

    def offers(worker: Mapping[str, Any]) -> bool:
        return all(worker.get("resources", {}).get(k, 0) >= v for k, v in resources.items())

    if resources and workers and not any(offers(worker) for worker in workers):
        wanted = " ".join(f"{k}={v:g}" for k, v in resources.items())
        raise ConfigError(
            f"{source} {address}: none of its {len(workers)} workers offers {wanted}, which "
            f"this run's CUDA stages need; start one with `dask worker {address} --resources "
            f"{wanted}`, or run on the CPU (--device cpu)"
        )
