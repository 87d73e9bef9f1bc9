"""The Prefect API that command-line runs talk to.

:func:`local_api` is the one context manager the CLI wraps a flow call in. It picks, in order:

1. ``PREFECT_API_URL`` when it is set (a server you run elsewhere, or Prefect Cloud);
2. the local server, when one answers at :func:`local_server_api_url` within
   :data:`PROBE_TIMEOUT_SECONDS` (``make server`` / ``prefect server start``; the address comes
   from Prefect's own ``PREFECT_SERVER_API_HOST`` / ``PREFECT_SERVER_API_PORT`` settings, the
   ones ``prefect server start`` binds by default: ``http://127.0.0.1:4200/api``). The runs then
   show in the UI you keep open, and nothing is started; one line on stderr says so;
3. otherwise a temporary server of this process: ``uvicorn`` serving Prefect's API on a free port
   of 127.0.0.1, its output appended to the log file. It is stopped when the block ends, and on
   Linux it also dies with this process, even when this process is SIGKILLed
   (``PR_SET_PDEATHSIG``: the kernel sends it SIGTERM when the thread that started it ends).
   Heavy stages then take this machine's device slots (``SEGSTYLE_DEVICE_SLOTS=host``, see
   ``segstyle.tasks.device_slots``) rather than that short-lived server's concurrency limits.

The temporary server is ephemeral like the one Prefect itself would start (no UI, no background
services) and uses the same database (``PREFECT_HOME``) as the other two would.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

#: How long the local server gets to answer ``/api/health`` before a temporary one is started.
PROBE_TIMEOUT_SECONDS = 0.3

_PR_SET_PDEATHSIG = 1

#: ``segstyle.tasks.device_slots.MODE_ENV``: while the CLI runs on a temporary server of its
#: own, device slots are this machine's file locks rather than that server's concurrency
#: limits (the run is local to the machine, and the server's leases die with it).
DEVICE_SLOTS_ENV = "SEGSTYLE_DEVICE_SLOTS"


def local_server_api_url() -> str:
    """The API URL of the local server: ``http://{PREFECT_SERVER_API_HOST}:{..._PORT}/api``.

    A wildcard bind address (``0.0.0.0``, ``::``) is probed on the loopback address.
    """
    from prefect.settings import get_current_settings

    api = get_current_settings().server.api
    host = str(api.host or "127.0.0.1")
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{api.port}/api"


def api_is_up(api_url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """True when a Prefect API answers ``GET {api_url}/health`` with ``true`` within ``timeout``.

    Proxies from the environment are not used (the address is local).
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200 and response.read(64).strip() == b"true"
    except (OSError, ValueError):  # refused, timed out, HTTP error, bad URL
        return False


@contextlib.contextmanager
def local_api(
    log_path: Path, announce: Callable[[str], None] | None = None
) -> Iterator[str | None]:
    """Run the block against the API chosen as described in the module docstring.

    Args:
        log_path: where a temporary server's stdout and stderr are appended.
        announce: called with one line when the local server is used (default: print it to
            stderr; stdout stays reserved for the command's results).

    Yields:
        The API URL in use; ``None`` when an external ``PREFECT_API_URL`` is configured.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    url = local_server_api_url()
    if api_is_up(url):
        ui = url.removesuffix("/api")
        line = f"segstyle: runs go to the Prefect server at {url} (UI: {ui})"
        (announce or (lambda text: print(text, file=sys.stderr, flush=True)))(line)
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_to_api()
        return
    with (
        temporary_server(log_path) as url,
        temporary_settings({PREFECT_API_URL: url}),
        _environ_default(DEVICE_SLOTS_ENV, "host"),
    ):
        try:
            yield url
        finally:
            _drain_to_api()


@contextlib.contextmanager
def _environ_default(name: str, value: str) -> Iterator[None]:
    """Set environment variable ``name`` for the block (inherited by subprocesses started in
    it, e.g. Dask workers) unless it is set already."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextlib.contextmanager
def temporary_server(log_path: Path, startup_timeout: float | None = None) -> Iterator[str]:
    """A Prefect API server on a free port of 127.0.0.1 for the block; yields its API URL.

    Its output is appended to ``log_path``. It runs in its own session (a Ctrl-C in the terminal
    reaches this process, which then stops the server after the flow's last API calls) and, on
    Linux, receives SIGTERM when the thread that started it ends, so a SIGKILLed CLI does not
    leave it listening.
    """
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    timeout = startup_timeout or float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process, url = _start_server(log_path, timeout)
    try:
        yield url
    finally:
        _stop(process)


def _start_server(log_path: Path, timeout: float) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server and wait for ``/health``; retry on another port if the port was taken."""
    for _ in range(5):
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        process = _popen_server(port, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if api_is_up(url, timeout=1.0):
                return process, url
            time.sleep(0.05)
        else:
            _stop(process)
            raise RuntimeError(
                f"the temporary Prefect server did not answer on {url} within {timeout:.0f} s "
                f"(its output: {log_path})"
            )
        if process.returncode != 3:  # uvicorn's exit status when it cannot bind the port
            raise RuntimeError(
                f"the temporary Prefect server exited with status {process.returncode} "
                f"(its output: {log_path})"
            )
    raise RuntimeError(f"no free port for the temporary Prefect server (its output: {log_path})")


def _popen_server(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    import prefect
    from prefect.settings import get_current_settings

    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(Path(prefect.__file__).parent.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        # what Prefect's own temporary server sets: API only, no UI, no background services
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),
        )


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when its parent thread ends (Linux).

    libc and ``prctl`` are looked up here, in the parent: the child only calls them. If the
    parent died between fork and ``prctl``, the child is already orphaned and ends itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _drain_to_api() -> None:
    """Send buffered logs and events before the block ends (else: connection errors later)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):
        APILogWorker.drain_all()
    EventsWorker.drain_all()
