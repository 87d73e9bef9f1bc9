"""Device slots: how many heavy model stages (segment, stylize) run at once per device.

A GPU has one slot, a CPU one per core (a stage takes its compute threads). ``prefect`` mode: a
global concurrency limit :func:`slot_name` (``prefect gcl update NAME --limit N`` resizes it),
leased for :data:`LEASE_SECONDS`. ``host`` mode (no API, or the CLI's temporary server): a
``flock`` per slot in ``$SEGSTYLE_DEVICE_SLOT_DIR`` (default ``$TMPDIR/segstyle-device-slots``).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

#: A held slot's lease in seconds (the server's minimum).
LEASE_SECONDS = 60.0
MODE_ENV = "SEGSTYLE_DEVICE_SLOTS"  # "prefect" | "host"; unset: prefect when an API is set
SlotMode = Literal["prefect", "host"]
HOST_ENV = "SEGSTYLE_DEVICE_SLOT_HOST"  # the machine's name in slot names (default: host name)
DIR_ENV = "SEGSTYLE_DEVICE_SLOT_DIR"  # the folder of host-mode lock files


def _resolved(device: Any) -> str:
    """``device`` as text, with ``cuda`` and ``auto`` resolved (``cuda:0``, ``cpu``)."""
    text = str(device).strip().lower()
    if text in ("auto", "cuda"):
        from segstyle_core.devices import resolve_device

        text = str(resolve_device(text))
    return text


def slot_name(device: Any) -> str:
    """``segstyle-device-<device>@<host>`` (``cuda:0`` on two machines is two GPUs)."""
    host = os.environ.get(HOST_ENV) or socket.gethostname() or "localhost"
    return f"segstyle-device-{_clean(_resolved(device).replace(':', '-'))}@{_clean(host)}"


def slot_size(device: Any) -> tuple[int, int]:
    """(slots of a new limit, slots one stage takes): a CPU's cores and compute threads; 1, 1."""
    if _resolved(device) != "cpu":
        return 1, 1
    from segstyle_core.devices import compute_threads

    cores = os.cpu_count() or 1
    return cores, min(compute_threads(), cores)


def _clean(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "unknown"


def slot_mode() -> SlotMode:
    """``"prefect"`` or ``"host"``: ``$SEGSTYLE_DEVICE_SLOTS``, else whether an API is set."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode not in ("prefect", "host"):
        from prefect.settings import PREFECT_API_URL

        mode = "prefect" if PREFECT_API_URL.value() else "host"
    return "prefect" if mode == "prefect" else "host"


@contextlib.contextmanager
def device_slot(device: Any, mode: SlotMode | None = None) -> Iterator[None]:
    """Hold this process's share of ``device``'s slots for the block, waiting for them;
    Prefect's or httpx's errors when the API fails."""
    name, (limit, occupy) = slot_name(device), slot_size(device)
    if (mode or slot_mode()) == "host":
        with _host_slots(name, limit, occupy):
            yield
        return
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency
    from prefect.context import TaskRunContext

    limit = _ensure_limit(name, limit)
    run = TaskRunContext.get()  # the lease's holder on the server: the task run, if any
    holder = ConcurrencyLeaseHolder(type="task_run", id=run.task_run.id) if run else None
    with concurrency(
        name,
        occupy=min(occupy, limit),  # a limit lowered by hand still lets a stage run
        lease_duration=LEASE_SECONDS,
        strict=True,  # a missing limit is an error, not "no limit"
        holder=holder,
        raise_on_lease_renewal_failure=False,  # a failed renewal logs a warning; work goes on
    ):
        yield


def _lock_file(name: str) -> int:
    """A descriptor of ``<folder>/<name>.lock``; the folder is sticky and world-writable."""
    folder = Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir(), "segstyle-device-slots"))
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            folder.chmod(0o1777)
    return os.open(folder / f"{name}.lock", os.O_RDONLY | os.O_CREAT, 0o644)


@contextlib.contextmanager
def _host_slots(name: str, limit: int, occupy: int) -> Iterator[None]:
    """``occupy`` of the ``limit`` locks ``<name>.<i>.lock``, all at once (retried every
    0.05 s, holding none in between, so that two waiters never hold part each)."""
    fds = [_lock_file(f"{name}.{i}") for i in range(limit)]
    try:
        while not _lock_some(fds, occupy):
            time.sleep(0.05)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # drops the locks


def _lock_some(fds: list[int], occupy: int) -> bool:
    """Whether ``occupy`` of ``fds`` got locked without waiting (else none stays locked)."""
    import fcntl  # POSIX: only host mode needs it

    held = []
    for fd in fds:
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(fd)
            if len(held) == occupy:
                return True
    for fd in held:
        fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _ensure_limit(name: str, slots: int) -> int:
    """The limit ``name``'s slots, created with ``slots`` if missing, under a host lock (the
    server logs a traceback for every create that loses a race)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client, _host_slots(f"{name}.create", 1, 1):
        with contextlib.suppress(ObjectNotFound):
            return client.read_global_concurrency_limit_by_name(name).limit
        with contextlib.suppress(ObjectAlreadyExists):  # another machine was first
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots)
            )
        return client.read_global_concurrency_limit_by_name(name).limit


def dask_resources(device: Any) -> dict[str, float]:
    """``{"GPU": 1}`` for ``cuda`` or ``cuda:N``, else ``{}`` (``auto`` resolves on the worker)."""
    return {"GPU": 1} if str(device).strip().lower().startswith("cuda") else {}


def dask_annotations(device: Any) -> contextlib.AbstractContextManager[Any]:
    """Tasks submitted in the block need :func:`dask_resources` on a Dask worker."""
    resources = dask_resources(device)
    if not resources:
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources=resources)
