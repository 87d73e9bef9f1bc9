"""A quiet local Prefect API for command-line runs.

With no ``PREFECT_API_URL`` configured, Prefect starts a temporary server in a subprocess that
writes to this process's terminal (including SQLite "database is locked" tracebacks under
load). :func:`local_api` starts that same server with its output sent to a log file, points
the client at it, and stops it afterwards. With ``PREFECT_API_URL`` set (a real server or
Prefect Cloud), it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _fds_redirected(log_path: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``log_path`` (inherited by subprocesses started inside)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def local_api(log_path: Path) -> Iterator[str | None]:
    """Run the block against a temporary Prefect server whose output goes to ``log_path``.

    Yields the API URL in use (``None`` when an external ``PREFECT_API_URL`` is configured).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    with _fds_redirected(log_path):
        server.start()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain_to_api()
        with _fds_redirected(log_path):
            server.stop()


def _drain_to_api() -> None:
    """Send buffered logs and events before the server goes away (else: connection errors)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):
        APILogWorker.drain_all()
    EventsWorker.drain_all()
