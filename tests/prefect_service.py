"""A real Prefect server in a subprocess, for tests that need what a user's server does.

``prefect_test_harness`` (the ``prefect_api`` fixture) runs the API without its background
services, so nothing there ever schedules a run. :func:`prefect_service` starts the same
command a user runs (``prefect server start``, scheduler and all) on a free port of 127.0.0.1,
with its own ``PREFECT_HOME`` and its output in a log file, and stops it afterwards. Its
teardown fails when the server's log holds a Python traceback (but for the errors Prefect
recovers from by design, :data:`HANDLED_BY_PREFECT`): the server logs errors of its background
services (e.g. the scheduler's) only there, and a request never sees them.

Use the ``prefect_server`` fixture (``tests/conftest.py``, one server per test module), or the
context manager directly::

    with prefect_service(tmp_path / "prefect") as server:
        subprocess.run(["prefect", "deployment", "ls"], env=server.env(), check=True)
        with server.client() as client:
            client.read_deployments()
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

#: The project's root (the ``prefect.yaml`` and ``Makefile`` folder).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Environment variables a subprocess must not inherit from the test process: they would point
#: it at another server or profile, or a test server at the user's (production) database.
_INHERITED_PREFECT = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_UI_URL")
_INHERITED_PREFIXES = ("PREFECT_API_DATABASE_", "PREFECT_SERVER_DATABASE_")


def _own_environ() -> dict[str, str]:
    """The test process's environment without the variables above."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _INHERITED_PREFECT and not k.startswith(_INHERITED_PREFIXES)
    }


def prefect_executable() -> str:
    """The ``prefect`` command of the interpreter running the tests (the project's venv)."""
    beside = Path(sys.executable).with_name("prefect")
    return str(beside) if beside.exists() else "prefect"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen[Any], grace_s: float = 20.0) -> None:
    """SIGTERM the process's group (it must lead one: ``start_new_session=True``), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    # children that outlived the leader (e.g. a worker's flow-run subprocess)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


#: Errors the Prefect server logs with a traceback but recovers from by design, as pairs of (text
#: of the line that logged it, text of every exception line of its chain). On SQLite a worker's
#: heartbeat is a read, then a write, in one DEFERRED transaction: when another writer commits in
#: between, SQLite answers "database is locked" at once (SQLITE_BUSY_SNAPSHOT; no busy timeout
#: applies). Prefect logs it, closes the worker's channel as retryable (``WorkerChannelCloseReason.
#: HEARTBEAT_PERSISTENCE_FAILED``: ``terminal=False, retryable=True``) and the worker reconnects.
HANDLED_BY_PREFECT: tuple[tuple[str, str], ...] = (
    ("Worker channel heartbeat persistence failed", "database is locked"),
)

#: The lines that join two tracebacks of one chained exception.
_CHAIN_LINKS = (
    "The above exception was the direct cause of the following exception",
    "During handling of the above exception, another exception occurred",
)


def _traceback_spans(lines: Sequence[str]) -> list[tuple[int, int]]:
    """``(first, end)`` line indices of each traceback: its ``Traceback`` line, and the line
    after its frames (the exception line, or ``len(lines)`` when the log ends first)."""
    spans = []
    for i, line in enumerate(lines):
        if "Traceback" not in line:  # also "  + Exception Group Traceback ..."
            continue
        end = i + 1
        while end < len(lines) and lines[end][:1] in (" ", "\t"):
            end += 1
        spans.append((i, end))
    return spans


def _chains(lines: Sequence[str], spans: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The spans grouped by exception chain: two tracebacks belong to one chain when only blank
    lines and a :data:`_CHAIN_LINKS` line stand between them."""
    chains: list[list[tuple[int, int]]] = []
    for span in spans:
        if chains:
            between = [text.strip() for text in lines[chains[-1][-1][1] + 1 : span[0]]]
            if any(text.startswith(_CHAIN_LINKS) for text in between) and all(
                not text or text.startswith(_CHAIN_LINKS) for text in between
            ):
                chains[-1].append(span)
                continue
        chains.append([span])
    return chains


def _handled_by_prefect(lines: Sequence[str], chain: list[tuple[int, int]]) -> bool:
    """Whether a chain is one of :data:`HANDLED_BY_PREFECT`: its logging line and each of its
    exceptions match (a chain that also holds another error is not)."""
    logged_by = lines[chain[0][0] - 1] if chain[0][0] > 0 else ""
    raised = [lines[end] if end < len(lines) else "" for _, end in chain]
    return any(
        logged in logged_by and all(exception in text for text in raised)
        for logged, exception in HANDLED_BY_PREFECT
    )


def tracebacks(log_text: str, frames: int = 3, *, server_log: bool = False) -> list[str]:
    """Each Python traceback in a log, shortened: the log line before it (what logged it), its
    last ``frames`` frames and its exception line. A server's log (``server_log``) leaves out
    the exception chains Prefect recovers from by design (:data:`HANDLED_BY_PREFECT`)."""
    lines = log_text.splitlines()
    found = []
    for chain in _chains(lines, _traceback_spans(lines)):
        if server_log and _handled_by_prefect(lines, chain):
            continue
        for first, end in chain:
            body = lines[first + 1 : end]
            frame_starts = [n for n, text in enumerate(body) if text.lstrip().startswith("File ")]
            tail = body[frame_starts[-frames] :] if len(frame_starts) >= frames else body
            before = [lines[first - 1]] if first > 0 and lines[first - 1].strip() else []
            found.append("\n".join([*before, lines[first], *tail, *lines[end : end + 1]]))
    return found


@dataclass
class PrefectService:
    """A running ``prefect server start`` subprocess.

    Attributes:
        api_url: ``http://127.0.0.1:<port>/api`` (what ``PREFECT_API_URL`` takes).
        ui_url: ``http://127.0.0.1:<port>``, the UI's address.
        port: the TCP port on 127.0.0.1.
        home: the server's ``PREFECT_HOME`` (its SQLite database unless ``extra_env`` names
            another, the UI build).
        log_path: the server's stdout and stderr.
        process: the server process; it leads its own process group.
    """

    api_url: str
    ui_url: str
    port: int
    home: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for subprocesses (CLI, workers) that talk to this server.

        The test process's environment, without any other server's or profile's settings,
        with ``PREFECT_HOME`` and ``PREFECT_API_URL`` set to this server's, analytics off, plus
        ``extra`` (e.g. ``SEGSTYLE_HOME=...``).
        """
        env = _own_environ()
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(self.home / "storage"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
            # the test process turns Prefect's console down to ERROR; a subprocess's log is a file
            PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO",
        )
        env.update(extra)
        return env

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = 180,
        cwd: str | os.PathLike[str] = REPO_ROOT,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``prefect *args`` against this server; fail with its output when it exits non-zero.

        ``env`` defaults to :meth:`env`; output is captured (``.stdout``, ``.stderr``).
        """
        command = [prefect_executable(), *args]
        done = subprocess.run(
            command,
            cwd=cwd,
            env=dict(env) if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {done.returncode}\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
        return done

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """A synchronous Prefect client for this server (``prefect.client.orchestration``)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            with get_client(sync_client=True) as client:
                yield client

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def assert_log_clean(self) -> None:
        """Fail when the server's log holds a traceback (shown, up to three of them), but for
        the :data:`HANDLED_BY_PREFECT` ones."""
        found = tracebacks(self.log_text(), server_log=True)
        assert not found, (
            f"the Prefect server's log {self.log_path} holds {len(found)} traceback(s):\n\n"
            + "\n\n".join(found[:3])
        )


def _get(url: str, timeout: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local URL
            return response.read() if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


@contextlib.contextmanager
def prefect_service(
    base_dir: str | os.PathLike[str],
    *,
    scheduler_loop_s: float = 2,
    startup_timeout_s: float = 120,
    extra_env: Mapping[str, str] | None = None,
    check_log: bool = True,
) -> Iterator[PrefectService]:
    """Start ``prefect server start --host 127.0.0.1 --port <free>``; yield it; stop it.

    ``base_dir`` gets ``home/`` (the server's ``PREFECT_HOME``) and ``server.log``. The
    scheduler runs every ``scheduler_loop_s`` seconds (Prefect's default: 60), so scheduled
    runs appear within seconds of a deploy. ``extra_env`` adds server settings, e.g.
    ``PREFECT_API_DATABASE_CONNECTION_URL`` for PostgreSQL (``tests/postgres.py``); the test
    process's own database settings never reach the server. The block ends
    with the server's process group stopped (SIGTERM, then SIGKILL) and, with ``check_log``,
    :meth:`PrefectService.assert_log_clean`.

    Raises:
        RuntimeError: the server exited, or answered no health check within
            ``startup_timeout_s`` (the message ends with its log).
    """
    base = Path(base_dir)
    home = base / "home"
    home.mkdir(parents=True, exist_ok=True)
    log_path = base / "server.log"
    port = free_port()
    env = _own_environ()
    env.update(
        PREFECT_HOME=str(home),
        # the UI's API address; Prefect 3.8.8 derives it from port 4200, not from --port
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=str(scheduler_loop_s),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO",
        **(extra_env or {}),
    )
    command = [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log: IO[bytes]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=base,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown stops it and its children
        )
    service = PrefectService(
        api_url=f"http://127.0.0.1:{port}/api",
        ui_url=f"http://127.0.0.1:{port}",
        port=port,
        home=home,
        log_path=log_path,
        process=process,
    )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while _get(f"{service.api_url}/health") != b"true":
            if process.poll() is not None or time.monotonic() > deadline:
                state = (
                    f"exited {process.returncode}"
                    if process.poll() is not None
                    else f"answered no health check in {startup_timeout_s:.0f} s"
                )
                raise RuntimeError(
                    f"{' '.join(command)} {state}; its log {log_path}:\n{service.log_text()}"
                )
            time.sleep(0.5)
        yield service
    finally:
        stop_process_group(process)
    if check_log:
        service.assert_log_clean()
