"""Where a dataset run's tasks execute (:func:`task_runner`); Dask workers must see the same
``--out`` (a dead worker's tasks rerun elsewhere: finished stages are cache hits)."""

from __future__ import annotations

import asyncio
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


def scheduler_address(dask: str | None = None, workers: int | None = None) -> str | None:
    """The Dask scheduler's address: ``dask``, else (unless ``workers`` asks for a local
    cluster) ``$SEGSTYLE_DASK_ADDRESS``, else none."""
    if dask or workers:
        return dask or None
    return os.environ.get(DASK_ADDRESS_ENV) or None


def resources_of(devices: Iterable[str]) -> dict[str, float]:
    """The Dask worker resources that stages on ``devices`` ask for (``{"GPU": 1}``: CUDA)."""
    resources: dict[str, float] = {}
    for device in devices:
        resources |= dask_resources(device)
    return resources


def task_runner(
    dask: str | None = None, workers: int | None = None, devices: Iterable[str] = ()
) -> TaskRunner[Any]:
    """Dask at ``dask``, else ``workers`` local ones (each offering what stages on ``devices``
    ask for: the machine's device slots still take turns), else Dask at
    ``$SEGSTYLE_DASK_ADDRESS``, else threads."""
    address = scheduler_address(dask, workers)
    if address is None and not workers:
        return ThreadPoolTaskRunner(max_workers=THREADS)
    from prefect_dask import DaskTaskRunner

    if address is not None:
        return DaskTaskRunner(address=address)
    cluster: dict[str, Any] = {"n_workers": workers, "threads_per_worker": 1, "processes": True}
    if resources := resources_of(devices):
        cluster["resources"] = resources
    return DaskTaskRunner(cluster_kwargs=cluster)


def computes_here(runner: TaskRunner[Any]) -> bool:
    """Whether :func:`task_runner`'s ``runner`` computes on this machine: threads, or a Dask
    cluster it starts here; not a scheduler it connects to by address."""
    return getattr(runner, "address", None) is None


def check_cluster(dask: str | None, workers: int | None, devices: Iterable[str]) -> str | None:
    """Before a run that goes to a scheduler by address (:func:`scheduler_address`): that it
    answers and offers what stages on ``devices`` need (:func:`check_scheduler`, whose warning
    line it returns)."""
    address = scheduler_address(dask, workers)
    if address is None:
        return None
    source = "--dask" if dask else f"${DASK_ADDRESS_ENV}"
    return check_scheduler(address, source, resources_of(devices))


def check_scheduler(address: str, source: str, resources: Mapping[str, float]) -> str | None:
    """:class:`ConfigError` naming ``source`` (the flag or variable that gave ``address``)
    unless ``address`` is a TCP address, a Dask scheduler there tells its workers within twice
    Dask's connect timeout (``distributed.comm.timeouts.connect``, 30 s unless configured) and,
    when it has workers and the run's stages need ``resources`` (``{"GPU": 1}`` for CUDA), one
    of them offers those (Dask would hold such tasks until one joins). Returns a warning line
    when it has no workers yet (the run waits for one), else ``None``."""
    import dask
    from dask.utils import parse_timedelta
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address, strict=False)  # no scheme: tcp
        if scheme != "tcp":
            raise ValueError(f"scheme {scheme}:// where segstyle connects over tcp://")
        _, port = parse_host_port(location)
        if not 0 < int(port) < 2**16:
            raise ValueError(f"port {port} is not between 1 and 65535")
    except ValueError as error:
        raise ConfigError(
            f"{source} {address}: not a Dask scheduler address ({error}); give {ADDRESS_FORM}"
        ) from None
    limit_s = 2 * parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    reason: str | None = None
    try:
        workers = asyncio.run(asyncio.wait_for(_scheduler_workers(address), limit_s))
    except TimeoutError:  # Dask's connect timed out, or a listener never answered
        reason = f"no answer within {limit_s:g} s"
    except Exception as error:  # not Dask's protocol there: any error of the comm or the reply
        reason = (str(error) or type(error).__name__).splitlines()[0].rstrip(".")
    if reason is not None:
        raise ConfigError(
            f"{source} {address}: no Dask scheduler answered ({reason}); start one there "
            f"(`dask scheduler`), or give the address it prints ({ADDRESS_FORM})"
        )

    if not workers:  # Dask holds the tasks until a worker joins: legitimate, but say so
        extra = f" --resources {_wanted(resources)}" if resources else ""
        return (
            f"{source} {address}: the scheduler has no workers yet; the run waits until one "
            f"joins (`dask worker {address}{extra}`)"
        )

    def offers(worker: Mapping[str, Any]) -> bool:
        return all(worker.get("resources", {}).get(k, 0) >= v for k, v in resources.items())

    if resources and not any(offers(worker) for worker in workers):
        wanted = _wanted(resources)
        raise ConfigError(
            f"{source} {address}: none of its {len(workers)} workers offers {wanted}, which "
            f"this run's CUDA stages need; start one with `dask worker {address} --resources "
            f"{wanted}`, or run on the CPU (--device cpu)"
        )
    return None


def _wanted(resources: Mapping[str, float]) -> str:
    """``resources`` as ``dask worker --resources`` takes them: ``GPU=1``."""
    return " ".join(f"{k}={v:g}" for k, v in resources.items())


async def _scheduler_workers(address: str) -> list[Mapping[str, Any]]:
    """Each worker's identity (its ``resources`` among them) as the scheduler tells it."""
    from distributed.core import rpc

    async with rpc(address) as scheduler:
        identity = await scheduler.identity(n_workers=-1)
    return list(identity["workers"].values())
