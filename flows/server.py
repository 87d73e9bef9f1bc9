"""The Prefect API of command-line runs (:func:`local_api`): ``PREFECT_API_URL`` when set; else
the local server (``make server``) if it passes its health check (:func:`api_is_up`); else
Prefect's temporary ``SubprocessASGIServer`` (API only, 127.0.0.1) with host device slots.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

from segstyle.tasks.device_slots import MODE_ENV as DEVICE_SLOTS_ENV
from segstyle_core.errors import ConfigError, error_line

#: How long the local server's port gets to accept the health check: a closed port refuses at
#: once, and a running server's kernel accepts at once however busy the server is.
PROBE_CONNECT_SECONDS = 0.3
#: How long a server that accepted gets to answer ``/api/health`` (a busy one took over 0.3 s
#: on the 2-core CI machine, and a run then went to a temporary server instead of the UI's).
PROBE_ANSWER_SECONDS = 10.0
#: The least a temporary server gets to start: Prefect's default (20 s) is too short for its first
#: start (the database migrations) on a busy machine, and the run would fail for nothing.
STARTUP_TIMEOUT_SECONDS = 120
#: Seconds a configured (possibly remote) API gets to accept the health check's connection.
CONFIGURED_CONNECT_SECONDS = 5.0


def local_server_api_url() -> str:
    """The API address ``prefect server start`` binds (a wildcard host is the loopback)."""
    from prefect.settings import get_current_settings

    api = get_current_settings().server.api
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "*": "127.0.0.1", "::": "::1"}.get(
        str(api.host or ""), str(api.host)
    )
    return f"http://{f'[{host}]' if ':' in host else host}:{api.port}/api"


def api_is_up(api_url: str) -> bool:
    """True when ``GET {api_url}/health`` connects within :data:`PROBE_CONNECT_SECONDS` and
    answers ``true`` within :data:`PROBE_ANSWER_SECONDS` (no proxy)."""
    import httpx

    timeout = httpx.Timeout(PROBE_ANSWER_SECONDS, connect=PROBE_CONNECT_SECONDS)
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout, trust_env=False)
    except (httpx.HTTPError, ValueError):  # refused, timed out, bad URL
        return False
    return response.status_code == 200 and response.text.strip() == "true"


def check_configured_api(api_url: str) -> None:
    """:class:`ConfigError` unless the API at the ``PREFECT_API_URL`` setting answers Prefect's
    health check: Prefect's own client (its TLS, auth and proxy settings apply) without its
    retries, given :data:`CONFIGURED_CONNECT_SECONDS` to connect and
    :data:`PROBE_ANSWER_SECONDS` to answer."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    timeout = httpx.Timeout(PROBE_ANSWER_SECONDS, connect=CONFIGURED_CONNECT_SECONDS)
    try:
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
            with get_client({"timeout": timeout}, sync_client=True) as client:
                error = client.api_healthcheck()
    except Exception as exc:  # a URL httpx cannot parse (a port that is not a number, ...)
        error = exc
    if error is None:
        return
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        raise ConfigError(
            f"PREFECT_API_URL {api_url}: the API refused access (HTTP {status}); set "
            "PREFECT_API_KEY for it, or unset PREFECT_API_URL to run on a temporary server"
        )
    raise ConfigError(
        f"PREFECT_API_URL {api_url}: no Prefect API answers ({error_line(error)}); start its "
        "server (`make server`), or unset the setting (`unset PREFECT_API_URL`, or `prefect "
        "config unset PREFECT_API_URL`) to run on a temporary server"
    )


@contextlib.contextmanager
def local_api(
    log_path: Path, announce: Callable[[str], None] | None = None
) -> Iterator[str | None]:
    """Run the block against the module docstring's API; yield its URL (``None``: configured).
    A temporary server logs to ``log_path``; ``announce`` (default: stderr) names a local one."""
    from prefect.settings import (
        PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
        PREFECT_API_URL,
        temporary_settings,
    )

    if configured := PREFECT_API_URL.value():
        check_configured_api(configured)
        yield None
        return
    with contextlib.ExitStack() as stack:
        url = local_server_api_url()
        if api_is_up(url):
            line = f"segstyle: runs go to the Prefect server at {url} (UI: {url[:-4]})"
            (announce or functools.partial(print, file=sys.stderr, flush=True))(line)
        else:
            url = stack.enter_context(temporary_server(log_path))
            slots = os.environ.get(DEVICE_SLOTS_ENV, "host")
            stack.enter_context(mock.patch.dict(os.environ, {DEVICE_SLOTS_ENV: slots}))
        # Plain HTTP on loopback: spares each task run's client loading the CA bundle (25 ms).
        insecure = {PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}
        stack.enter_context(temporary_settings({PREFECT_API_URL: url, **insecure}))
        stack.callback(_drain_to_api)
        yield url


@contextlib.contextmanager
def temporary_server(log_path: Path) -> Iterator[str]:
    """Prefect's ``SubprocessASGIServer`` for the block, logging to ``log_path``; yields its API
    URL. In its own session (this process stops it after a Ctrl-C), it dies with its thread.
    It gets ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` to answer, at least
    :data:`STARTUP_TIMEOUT_SECONDS`."""
    from prefect.server.api import server as prefect_server
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as TIMEOUT

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:  # a port of our own (port None: Prefect's shared instance)
        sock.bind(("127.0.0.1", 0))
        server = prefect_server.SubprocessASGIServer(sock.getsockname()[1])
    try:
        with open(log_path, "ab") as log:
            # Prefect's Popen takes no output, session or death-signal arguments (it has atexit).
            popen = functools.partial(
                subprocess.Popen,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent() if sys.platform == "linux" else None,
            )
            with mock.patch.object(prefect_server, "subprocess", SimpleNamespace(Popen=popen)):
                try:
                    server.start(timeout=max(TIMEOUT.value(), STARTUP_TIMEOUT_SECONDS))
                except RuntimeError as error:  # it timed out: the reason is in the log
                    raise RuntimeError(f"{error} The server's output: {log_path}") from error
        yield server.api_url
    finally:
        server.stop()


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM the child when the parent thread ends (``PR_SET_PDEATHSIG``)."""
    prctl, parent = ctypes.CDLL(None).prctl, os.getpid()

    def hook() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _drain_to_api() -> None:
    """Send buffered logs and events while the API still answers."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):
        APILogWorker.drain_all()
    EventsWorker.drain_all()
