"""Device slots: how many heavy model stages may run on one device at once, across processes.

A heavy stage (segment, stylize) runs inside :func:`device_slot` ``(device)``. The slot is one
of :data:`SLOTS_PER_DEVICE` (1) per physical device: on the CPU one model stage already uses
every core (torch's intra-op threads); on a GPU one at a time keeps memory predictable. Light
stages take no slot.

Where the slot lives (:func:`slot_mode`):

``prefect`` (a Prefect API is configured: ``PREFECT_API_URL``)
    A Prefect global concurrency limit named :func:`slot_name`, e.g.
    ``segstyle-device-cpu@myhost`` or ``segstyle-device-cuda-0@gpu-box``, created with
    :data:`SLOTS_PER_DEVICE` slot on first use (an existing limit is left as it is, so raising
    it in the UI or with ``prefect gcl update NAME --limit 2`` is how to allow more). Every
    process that talks to the same server and runs on the same machine shares it: the CLI,
    Dask worker processes, deployment runs; the UI's *Concurrency* page shows it. The name
    carries the machine (``SEGSTYLE_DEVICE_SLOT_HOST``, default: the host name) because a
    device is a machine's: ``cuda:0`` on two machines are two GPUs.

    A slot is a lease (:data:`LEASE_SECONDS`, renewed in the background). A holder that dies
    (SIGKILL, OOM killer) cannot release it, and Prefect frees an expired lease only on a
    server that runs its background services (``prefect server start``, not the temporary
    API of tests or of ``prefect_test_harness``), after up to a minute and a half. So each
    holder also keeps a lock on a small file (``SEGSTYLE_DEVICE_SLOT_DIR``, default
    ``$TMPDIR/segstyle-device-slots``) that names its lease; the kernel drops that lock when
    the process dies, however it dies. A waiter that finds an unlocked holder file releases
    that lease itself (the holder is gone), so a killed run's slot is free again within
    :data:`RECLAIM_EVERY_SECONDS` of the next run asking for it.

``host`` (no Prefect API configured, or ``SEGSTYLE_DEVICE_SLOTS=host``)
    An exclusive ``flock`` on ``<SEGSTYLE_DEVICE_SLOT_DIR>/<slot name>.lock``: one holder per
    device on this machine, across all processes, released by the kernel when a holder dies.
    Without an API there is no server to hold a global limit (Prefect would start a private
    temporary one per process). The CLI also uses this mode while it runs on a temporary
    server of its own (``segstyle.flows.server`` sets ``SEGSTYLE_DEVICE_SLOTS=host``): such
    a run is local to this machine, and that server's leases die with it.

Dask: a worker runs a task that needs a GPU only when the task is annotated with the ``GPU``
resource and the worker has one (``dask worker --resources GPU=1``, or
``LocalCluster(resources={"GPU": 1})``; a worker without it never runs the task). Submit heavy
stages inside :func:`dask_annotations` ``(device)`` (or ``dask.annotate(resources=
dask_resources(device))``); for a non-CUDA device it annotates nothing.

Limits of the ``prefect`` mode: the processes sharing a limit must share the holder-file
directory (one machine, or containers with it mounted) and spell the API URL the same way.
A server restarted while a slot is held loses its leases (Prefect keeps them in memory by
default) and the slot stays taken; start the server with
``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem``
to keep leases across restarts, or reset it with
``prefect gcl update segstyle-device-cpu@myhost --active-slots 0``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; see _host_slot
    fcntl = None  # type: ignore[assignment]

_log = logging.getLogger(__name__)

#: Slots a new device limit gets (an existing limit keeps the number it has).
SLOTS_PER_DEVICE = 1

#: Environment variables of this module.
MODE_ENV = "SEGSTYLE_DEVICE_SLOTS"  # "prefect" | "host"; unset: prefect when an API is set
HOST_ENV = "SEGSTYLE_DEVICE_SLOT_HOST"  # the machine's name in slot names
DIR_ENV = "SEGSTYLE_DEVICE_SLOT_DIR"  # holder files and host-mode lock files

#: Lease of a held slot (Prefect's minimum is 60 s), and how often a holder renews it.
LEASE_SECONDS = 60.0
RENEW_EVERY_SECONDS = LEASE_SECONDS / 3
#: Longest pause between two attempts of a waiting stage (the server may suggest up to 39 s).
POLL_SECONDS = 0.5
#: How often a waiting stage looks for holders that died.
RECLAIM_EVERY_SECONDS = 2.0

_NAME_PREFIX = "segstyle-device-"
_created: set[tuple[str, str]] = set()
_created_lock = threading.Lock()


# --- names ------------------------------------------------------------------------------------


def device_key(device: Any) -> str:
    """``"cpu"``, ``"cuda-0"``, …: the device as it appears in slot names.

    ``"auto"`` and ``"cuda"`` (no index) resolve on this machine, like the backends do.
    """
    text = str(device).strip().lower()
    if text in ("auto", "cuda"):
        from segstyle_core.devices import resolve_device

        text = str(resolve_device(text))
    return _clean(text.replace(":", "-"))


def host_name() -> str:
    """This machine in slot names: ``$SEGSTYLE_DEVICE_SLOT_HOST`` or the host name."""
    return _clean(os.environ.get(HOST_ENV) or socket.gethostname() or "localhost")


def slot_name(device: Any) -> str:
    """The slot's name: the global concurrency limit's, and the lock file's in host mode."""
    return f"{_NAME_PREFIX}{device_key(device)}@{host_name()}"


def _clean(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "unknown"


def slot_mode() -> str:
    """``"prefect"`` or ``"host"``: ``$SEGSTYLE_DEVICE_SLOTS``, else whether an API is set."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("prefect", "host"):
        return mode
    from prefect.settings import PREFECT_API_URL

    return "prefect" if PREFECT_API_URL.value() else "host"


def slot_dir() -> Path:
    """Shared by every user of the machine: created world-writable and sticky, like /tmp."""
    directory = Path(
        os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / "segstyle-device-slots"
    )
    _shared_dir(directory)
    return directory


def _shared_dir(directory: Path) -> None:
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            directory.chmod(0o1777)


# --- the slot ---------------------------------------------------------------------------------


@contextlib.contextmanager
def device_slot(device: Any) -> Iterator[None]:
    """Hold one of ``device``'s slots for the block (blocks until one is free).

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (a :class:`torch.device`
            works too).

    Raises:
        prefect.exceptions.PrefectHTTPStatusError, httpx.HTTPError: in ``prefect`` mode, when
            the configured API fails or cannot be reached (the run could not report its
            states either).
    """
    name = slot_name(device)
    if slot_mode() == "host":
        with _host_slot(name):
            yield
    else:
        with _prefect_slot(name):
            yield


@contextlib.contextmanager
def _host_slot(name: str) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - no flock: one slot per process, as before
        with _process_lock(name):
            yield
        return
    path = slot_dir() / f"{name}.lock"
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_process_locks: dict[str, threading.Lock] = {}


def _process_lock(name: str) -> threading.Lock:
    with _created_lock:
        return _process_locks.setdefault(name, threading.Lock())


@contextlib.contextmanager
def _prefect_slot(name: str) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api_url = str(PREFECT_API_URL.value() or "").rstrip("/")
    holders = _holder_dir(name, api_url)
    with get_client(sync_client=True) as client:
        ensure_limit(client, name)
        lease_id = _acquire(client, name, holders)
        try:
            holder = _HolderFile(holders, lease_id, api_url)
        except BaseException:
            client.release_concurrency_slots_with_lease(lease_id)
            raise
    renewal = _Renewal(lease_id)
    try:
        yield
    finally:
        renewal.stop()
        try:
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(lease_id)
        except Exception as exc:  # noqa: BLE001 - the next waiter releases it (file left)
            _log.warning("%s: could not release the slot (%s); the next waiter will", name, exc)
            holder.close(remove=False)
        else:
            holder.close(remove=True)


def ensure_limit(client: Any, name: str, slots: int = SLOTS_PER_DEVICE) -> None:
    """Create the global concurrency limit ``name`` with ``slots`` slots unless it exists."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    key = (str(client.api_url), name)
    # One check-and-create at a time on this machine (a flock, then this process's lock): the
    # flow's threads and a Dask cluster's worker processes race here, and the server logs a
    # traceback for every losing create. Machines still race (rarely); the loser's 409 is fine.
    with _host_slot(f"{name}.create"), _created_lock:
        if key in _created:
            return
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another process was first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots)
                )
        _created.add(key)


def _acquire(client: Any, name: str, holders: Path) -> UUID:
    """Take a slot of limit ``name``: retry every <= POLL_SECONDS, releasing dead holders'."""
    import httpx

    holder = _lease_holder()
    next_reclaim = 0.0
    waited_since = time.monotonic()
    announced = False
    while True:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name],
                slots=1,
                mode="concurrency",
                lease_duration=LEASE_SECONDS,
                holder=holder,
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423 Locked: every slot is taken
                raise
            retry_after = float(exc.response.headers.get("Retry-After", POLL_SECONDS))
        else:
            body = response.json()
            lease_id = UUID(body["lease_id"])
            if body.get("limits") or not _limit_was_missing(client, name):
                return lease_id  # held; or the limit is inactive (switched off in the UI)
            # taken while the limit did not exist (deleted meanwhile): take it again
            client.release_concurrency_slots_with_lease(lease_id)
            continue
        now = time.monotonic()
        if now >= next_reclaim:
            release_dead_holders(client, holders)
            next_reclaim = now + RECLAIM_EVERY_SECONDS
        if not announced and now - waited_since > 30:
            _log.info("%s: waiting for a free slot (%.0f s so far)", name, now - waited_since)
            announced = True
        time.sleep(min(retry_after, POLL_SECONDS) * random.uniform(0.8, 1.0))


def _limit_was_missing(client: Any, name: str) -> bool:
    """Create limit ``name`` if it does not exist; say whether it had to."""
    from prefect.exceptions import ObjectNotFound

    with _created_lock:
        _created.discard((str(client.api_url), name))
    try:
        client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        ensure_limit(client, name)
        return True
    with _created_lock:
        _created.add((str(client.api_url), name))
    return False


def _lease_holder() -> Any:
    """The current task run as the lease's holder (shown by the server), when there is one."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None or context.task_run is None:
        return None
    return ConcurrencyLeaseHolder(type="task_run", id=context.task_run.id)


# --- holder files: which leases belong to live processes ---------------------------------------


def _holder_dir(name: str, api_url: str) -> Path:
    digest = hashlib.sha256(api_url.encode()).hexdigest()[:12]
    base = slot_dir() / name
    _shared_dir(base)
    directory = base / digest
    _shared_dir(directory)
    return directory


class _HolderFile:
    """``<dir>/<lease id>.lease``, locked (flock) by the holding process until it releases.

    The file is written and locked under a temporary name, then renamed into place: a holder
    file is never seen unlocked while its holder lives.
    """

    def __init__(self, directory: Path, lease_id: UUID, api_url: str) -> None:
        self.path = directory / f"{lease_id}.lease"
        temporary = directory / f".{lease_id}.{os.getpid()}.tmp"
        self.fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        record = {"lease_id": str(lease_id), "api_url": api_url, "pid": os.getpid()}
        os.write(self.fd, json.dumps(record).encode())
        os.replace(temporary, self.path)

    def close(self, remove: bool) -> None:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)


def release_dead_holders(client: Any, directory: Path) -> int:
    """Release the lease of every holder file in ``directory`` whose process has died.

    Returns how many were released. A file is dead when its lock can be taken; the caller
    then holds that lock while it releases and removes the file, so two waiters never release
    the same lease.
    """
    if fcntl is None:  # pragma: no cover
        return 0
    released = 0
    for path in directory.glob("*.lease"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its holder lives
            try:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    continue  # released and replaced meanwhile
            except FileNotFoundError:
                continue  # released meanwhile
            record = json.loads(os.read(fd, 4096) or b"{}")
            lease_id = UUID(record["lease_id"])
            client.release_concurrency_slots_with_lease(lease_id)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            released += 1
            _log.warning(
                "%s: released the slot of process %s, which ended without releasing it",
                directory.parent.name,
                record.get("pid"),
            )
        except (ValueError, KeyError) as exc:  # not a holder file of ours
            _log.warning("%s: ignoring unreadable holder file (%s)", path, exc)
        finally:
            os.close(fd)
    return released


# --- lease renewal ----------------------------------------------------------------------------


class _Renewal:
    """Renews a lease every :data:`RENEW_EVERY_SECONDS` until stopped (a daemon thread)."""

    def __init__(self, lease_id: UUID) -> None:
        import contextvars

        self.lease_id = lease_id
        self._stop = threading.Event()
        context = contextvars.copy_context()  # the caller's Prefect settings (API URL)
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="segstyle-slot-lease", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        from prefect.client.orchestration import get_client

        while not self._stop.wait(RENEW_EVERY_SECONDS):
            try:
                with get_client(sync_client=True) as client:
                    client.renew_concurrency_lease(self.lease_id, LEASE_SECONDS)
            except Exception as exc:  # noqa: BLE001 - keep computing; try again next time
                _log.warning("device slot lease %s not renewed: %s", self.lease_id, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- Dask -------------------------------------------------------------------------------------

#: The Dask worker resource a CUDA stage needs one of.
GPU_RESOURCE = "GPU"


def dask_resources(device: Any) -> dict[str, float]:
    """``{"GPU": 1}`` for a CUDA device (``cuda``, ``cuda:N``), else ``{}``.

    ``"auto"`` asks for nothing: it resolves on the worker that runs the task.
    """
    text = str(device).strip().lower()
    return {GPU_RESOURCE: 1} if text.startswith("cuda") else {}


@contextlib.contextmanager
def dask_annotations(device: Any) -> Iterator[None]:
    """Tasks submitted in the block need :func:`dask_resources` ``(device)`` on a Dask worker.

    Only the Dask task runner reads the annotation; under other task runners it is inert, and
    for a non-CUDA device nothing is annotated (dask is not even imported).
    """
    resources = dask_resources(device)
    if not resources:
        yield
        return
    import dask

    with dask.annotate(resources=resources):
        yield
