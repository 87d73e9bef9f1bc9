"""The Prefect API that command-line runs talk to (:func:`local_api`), the first of:

1. ``PREFECT_API_URL`` when it is set (a server elsewhere, or Prefect Cloud);
2. the local server (``make server``) when it answers ``/health`` at
   :func:`local_server_api_url` within :data:`PROBE_TIMEOUT_SECONDS`: runs show in its UI;
3. Prefect's own temporary server (``SubprocessASGIServer``: API only, a free port of
   127.0.0.1) for the block; heavy stages then take the host's device slots
   (``SEGSTYLE_DEVICE_SLOTS=host``, :mod:`segstyle.tasks.device_slots`).
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
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

from segstyle.tasks.device_slots import MODE_ENV as DEVICE_SLOTS_ENV

#: How long the local server gets to answer ``/api/health`` before a temporary one is started.
PROBE_TIMEOUT_SECONDS = 0.3


def local_server_api_url() -> str:
    """The API address ``prefect server start`` binds (``PREFECT_SERVER_API_HOST`` and
    ``_PORT``; a wildcard host is the loopback)."""
    from prefect.settings import get_current_settings

    api = get_current_settings().server.api
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "*": "127.0.0.1", "::": "::1"}.get(
        str(api.host or ""), str(api.host)
    )
    return f"http://{f'[{host}]' if ':' in host else host}:{api.port}/api"


def api_is_up(api_url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """True when ``GET {api_url}/health`` answers ``true`` within ``timeout`` (no proxy)."""
    import httpx

    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout, trust_env=False)
    except (httpx.HTTPError, ValueError):  # refused, timed out, bad URL
        return False
    return response.status_code == 200 and response.text.strip() == "true"


@contextlib.contextmanager
def local_api(
    log_path: Path, announce: Callable[[str], None] | None = None
) -> Iterator[str | None]:
    """Run the block against the API the module docstring names; yield its URL (``None``: a
    configured ``PREFECT_API_URL``). A temporary server logs to ``log_path``; ``announce``
    gets the line naming a local server (default: stderr)."""
    from prefect.settings import (
        PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
        PREFECT_API_URL,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
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
        # Plain HTTP on loopback has no certificate to verify: skipping verification spares
        # every task run's new client loading the CA bundle (25 ms each, measured on Dask).
        insecure = {PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}
        stack.enter_context(temporary_settings({PREFECT_API_URL: url, **insecure}))
        stack.callback(_drain_to_api)
        yield url


@contextlib.contextmanager
def temporary_server(log_path: Path) -> Iterator[str]:
    """Prefect's ``SubprocessASGIServer`` for the block, logging to ``log_path``; yields its
    API URL. In its own session (a Ctrl-C reaches this process, which stops the server after
    the flow's last API calls), it dies with the thread that started it."""
    from prefect.server.api import server as prefect_server

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:  # a port of our own (port None: Prefect's shared instance)
        sock.bind(("127.0.0.1", 0))
        server = prefect_server.SubprocessASGIServer(sock.getsockname()[1])
    try:
        # What Prefect's class lacks: its Popen call takes no stdout, stderr or session
        # arguments, and nothing stops the server when its parent is SIGKILLed (only atexit).
        with (
            open(log_path, "ab") as log,
            mock.patch.object(
                prefect_server,
                "subprocess",
                types.SimpleNamespace(
                    Popen=functools.partial(
                        subprocess.Popen,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                        preexec_fn=_die_with_parent() if sys.platform == "linux" else None,
                    )
                ),
            ),
        ):
            try:
                server.start()
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
    """Send buffered logs and events before the block ends (else: connection errors later)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):
        APILogWorker.drain_all()
    EventsWorker.drain_all()
