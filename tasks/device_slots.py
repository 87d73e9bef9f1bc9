"""Device slots: one heavy model stage (segment, stylize) at a time per device, across processes.

A slot is named after the device and the machine (:func:`slot_name`; ``cuda:0`` on two machines
are two GPUs) and lives where :func:`slot_mode` says:

``prefect`` (``PREFECT_API_URL`` is set)
    Prefect's ``concurrency()`` on the global concurrency limit :func:`slot_name`, created with
    :data:`SLOTS_PER_DEVICE` slot if missing (an existing limit keeps its number: raise it on the
    UI's *Concurrency* page or with ``prefect gcl update NAME --limit 2``). A held slot is a
    lease of :data:`LEASE_SECONDS` (60 s, the server's minimum) that Prefect renews in the
    background. A holder killed without releasing it (SIGKILL, OOM) keeps the slot until the
    lease runs out and the server's repossessor (every 15 s) frees it, about 60-75 s after the
    kill, on a server that runs its services (``prefect server start``, not the test harness).

``host`` (no API, or ``SEGSTYLE_DEVICE_SLOTS=host``, set by ``segstyle.flows.server`` while the
CLI runs on a temporary server of its own)
    An exclusive ``flock`` on ``<SEGSTYLE_DEVICE_SLOT_DIR>/<slot name>.lock`` (default folder
    ``$TMPDIR/segstyle-device-slots``), dropped by the kernel the moment its holder dies.

Dask: a task annotated with the ``GPU`` resource runs only on a worker that has one (``dask
worker --resources GPU=1``); submit heavy CUDA stages inside :func:`dask_annotations`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Slots a new device limit gets (an existing limit keeps the number it has).
SLOTS_PER_DEVICE = 1
#: A held slot's lease in seconds (the server's minimum); Prefect renews it every 45 s.
LEASE_SECONDS = 60.0
MODE_ENV = "SEGSTYLE_DEVICE_SLOTS"  # "prefect" | "host"; unset: prefect when an API is set
HOST_ENV = "SEGSTYLE_DEVICE_SLOT_HOST"  # the machine's name in slot names (default: host name)
DIR_ENV = "SEGSTYLE_DEVICE_SLOT_DIR"  # the folder of host-mode lock files


def slot_name(device: Any) -> str:
    """``segstyle-device-<device>@<host>``, e.g. ``segstyle-device-cuda-0@gpu-box``, of
    ``"cpu"``, ``"cuda:N"``, a :class:`torch.device`, or ``"cuda"`` / ``"auto"`` (resolved here)."""
    text = str(device).strip().lower()
    if text in ("auto", "cuda"):
        from segstyle_core.devices import resolve_device

        text = str(resolve_device(text))
    host = os.environ.get(HOST_ENV) or socket.gethostname() or "localhost"
    return f"segstyle-device-{_clean(text.replace(':', '-'))}@{_clean(host)}"


def _clean(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "unknown"


def slot_mode() -> str:
    """``"prefect"`` or ``"host"``: ``$SEGSTYLE_DEVICE_SLOTS``, else whether an API is set."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("prefect", "host"):
        return mode
    from prefect.settings import PREFECT_API_URL

    return "prefect" if PREFECT_API_URL.value() else "host"


@contextlib.contextmanager
def device_slot(device: Any) -> Iterator[None]:
    """Hold one of ``device``'s slots for the block; wait for one. In ``prefect`` mode, raises
    Prefect's or httpx's errors when the API fails or cannot be reached."""
    name = slot_name(device)
    if slot_mode() == "host":
        with _host_lock(name):
            yield
        return
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency
    from prefect.context import TaskRunContext

    _ensure_limit(name)
    run = TaskRunContext.get()  # the lease's holder on the server: the task run, if any
    holder = ConcurrencyLeaseHolder(type="task_run", id=run.task_run.id) if run else None
    with concurrency(
        name,
        lease_duration=LEASE_SECONDS,
        strict=True,  # a missing limit is an error, not "no limit"
        holder=holder,
        raise_on_lease_renewal_failure=False,  # a failed renewal logs a warning; work goes on
    ):
        yield


@contextlib.contextmanager
def _host_lock(name: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<folder>/<name>.lock``. The folder is shared by every user
    of the machine (sticky and world-writable, like /tmp); lock files are opened read-only."""
    import fcntl  # POSIX: only host mode needs it

    folder = Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir(), "segstyle-device-slots"))
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            folder.chmod(0o1777)
    fd = os.open(folder / f"{name}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _ensure_limit(name: str) -> None:
    """Create the global concurrency limit ``name`` (:data:`SLOTS_PER_DEVICE` slots) if missing.

    Under this machine's lock of ``<name>.create``: threads and Dask worker processes race
    here, and the server logs a traceback for every losing create.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client, _host_lock(f"{name}.create"):
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another machine was first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=SLOTS_PER_DEVICE)
                )


def dask_resources(device: Any) -> dict[str, float]:
    """``{"GPU": 1}`` for a CUDA device (``cuda``, ``cuda:N``), else ``{}`` (``"auto"`` asks for
    nothing: it resolves on the worker that runs the task)."""
    return {"GPU": 1} if str(device).strip().lower().startswith("cuda") else {}


def dask_annotations(device: Any) -> contextlib.AbstractContextManager[Any]:
    """Tasks submitted in the block need :func:`dask_resources` ``(device)`` on a Dask worker.

    Only the Dask task runner reads the annotation; for a non-CUDA device nothing is annotated
    and dask is not imported.
    """
    resources = dask_resources(device)
    if not resources:
        return contextlib.nullcontext()
    import dask

    return dask.annotate(resources=resources)
