"""Which Prefect API a command-line run uses (``segstyle.flows.server.local_api``).

``PREFECT_API_URL`` when set; else the local server when it answers (nothing is started);
else Prefect's temporary server, its output in the log file, that stops with the block and
dies with its process, SIGKILL included.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segstyle_core.errors import ConfigError
from tests.prefect_service import REPO_ROOT, free_port, stop_process_group

#: A fresh database's migrations can take a loaded machine past Prefect's default of 20 s.
_STARTUP_TIMEOUT_S = 120

#: Enters ``local_api``, prints what it got as one JSON line, then sleeps until killed.
_ENTER = """
import json, os, sys, time
from pathlib import Path
from segstyle.flows.server import local_api
start = time.perf_counter()
with local_api(Path(sys.argv[1])) as url:
    print(json.dumps({
        "url": url,
        "seconds": time.perf_counter() - start,
        "slots": os.environ.get("SEGSTYLE_DEVICE_SLOTS"),
    }), flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _processes_with(*words: str) -> list[int]:
    """PIDs whose command line holds every one of ``words`` as an argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(word.encode() in argv for word in words):
            found.append(int(entry.name))
    return found


def _no_server(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("local_api started a server")


def test_local_server_address_is_prefect_server_settings() -> None:
    from prefect.settings import (
        PREFECT_SERVER_API_HOST,
        PREFECT_SERVER_API_PORT,
        temporary_settings,
    )

    from segstyle.flows.server import local_server_api_url

    with temporary_settings(restore_defaults={PREFECT_SERVER_API_HOST, PREFECT_SERVER_API_PORT}):
        assert local_server_api_url() == "http://127.0.0.1:4200/api"  # `make server`'s
    with temporary_settings({PREFECT_SERVER_API_HOST: "0.0.0.0", PREFECT_SERVER_API_PORT: 4321}):
        assert local_server_api_url() == "http://127.0.0.1:4321/api"
    with temporary_settings({PREFECT_SERVER_API_HOST: "::", PREFECT_SERVER_API_PORT: 4321}):
        assert local_server_api_url() == "http://[::1]:4321/api"


def test_probe_of_a_closed_port_is_quick() -> None:
    from segstyle.flows.server import api_is_up

    start = time.perf_counter()
    assert not api_is_up(f"http://127.0.0.1:{free_port()}/api")
    assert time.perf_counter() - start < 0.5


@contextlib.contextmanager
def _health_server(delay_s: float = 0.0) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 that answers ``GET /api/health`` with ``true`` after
    ``delay_s`` (404 elsewhere); yields its port."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay_s)
            healthy = self.path == "/api/health"
            self.send_response(200 if healthy else 404)
            self.end_headers()
            self.wfile.write(b"true" if healthy else b"")

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


def test_a_busy_local_server_is_still_found() -> None:
    """A server that accepts at once but answers its health check after a second (a loaded
    machine's) is up: a run must not go to a temporary server its UI does not show."""
    from segstyle.flows.server import api_is_up

    with _health_server(delay_s=1.0) as port:
        start = time.perf_counter()
        assert api_is_up(f"http://127.0.0.1:{port}/api")
        assert time.perf_counter() - start >= 1.0
        assert not api_is_up(f"http://127.0.0.1:{port}/elsewhere")


def test_configured_api_url_is_used_as_is_once_it_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``$PREFECT_API_URL`` is used without probing the local server; one where nothing
    answers (a stopped server, a typo) is one line before the run, not Prefect's traceback."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from segstyle.flows import server

    monkeypatch.setattr(server, "temporary_server", _no_server)
    monkeypatch.setattr(server, "api_is_up", lambda *a, **k: pytest.fail("probed"))
    with _health_server() as port:
        configured = f"http://127.0.0.1:{port}/api"
        with temporary_settings({PREFECT_API_URL: configured}):
            with server.local_api(tmp_path / "server.log") as url:
                assert url is None and PREFECT_API_URL.value() == configured
    for wrong in (f"http://127.0.0.1:{free_port()}/api", "http://127.0.0.1:42OO/api"):
        with temporary_settings({PREFECT_API_URL: wrong}):  # a stopped server, a typo
            with pytest.raises(ConfigError) as refused:
                with server.local_api(tmp_path / "server.log"):
                    pytest.fail("ran against an API that does not answer")
        assert str(refused.value).startswith(f"PREFECT_API_URL {wrong}: no Prefect API answers (")
        assert str(refused.value).endswith(
            "`prefect config unset PREFECT_API_URL`) to run on a temporary server"
        )


@pytest.mark.slow
def test_running_local_server_is_used_and_nothing_started(
    prefect_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_API_PORT, temporary_settings

    from segstyle.flows import server

    @flow(name="segstyle-local-api-probe")
    def probe() -> str:
        return "ok"

    monkeypatch.setattr(server, "temporary_server", _no_server)
    monkeypatch.delenv("SEGSTYLE_DEVICE_SLOTS", raising=False)
    lines: list[str] = []
    with temporary_settings(
        {PREFECT_SERVER_API_PORT: prefect_server.port}, restore_defaults={PREFECT_API_URL}
    ):
        start = time.perf_counter()
        with server.local_api(tmp_path / "server.log", announce=lines.append) as url:
            entered = time.perf_counter() - start
            assert url == prefect_server.api_url
            assert PREFECT_API_URL.value() == prefect_server.api_url
            assert "SEGSTYLE_DEVICE_SLOTS" not in os.environ  # slots are the server's limits
            state = probe(return_state=True)
        assert PREFECT_API_URL.value() is None
    assert entered < 1.0, entered
    assert lines == [
        f"segstyle: runs go to the Prefect server at {prefect_server.api_url} "
        f"(UI: {prefect_server.ui_url})"
    ]
    assert not (tmp_path / "server.log").exists()
    with prefect_server.client() as client:  # the run is in the server's database (its UI)
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.state.is_completed()


@pytest.mark.slow
def test_flow_runs_on_a_temporary_server_that_stops_with_the_block(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prefect import flow, get_client
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_API_PORT,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from segstyle.flows.server import local_api

    @flow(name="segstyle-temporary-server-probe")
    def probe(x: int) -> int:
        return x + 1

    monkeypatch.delenv("SEGSTYLE_DEVICE_SLOTS", raising=False)
    monkeypatch.setenv("PREFECT_SERVER_LOGGING_LEVEL", "DEBUG")  # so that the server logs
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "DEBUG")
    log = tmp_path / "logs" / "prefect-server.log"
    nothing_there = free_port()
    with temporary_settings(
        {
            PREFECT_SERVER_API_PORT: nothing_there,
            # far too short for a start: the server still gets STARTUP_TIMEOUT_SECONDS
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 1,
        },
        restore_defaults={PREFECT_API_URL},
    ):
        with local_api(log, announce=lambda line: pytest.fail(line)) as url:
            assert url is not None and PREFECT_API_URL.value() == url
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            assert port != nothing_there
            assert os.environ["SEGSTYLE_DEVICE_SLOTS"] == "host"
            (server_pid,) = _processes_with("--port", str(port))
            assert os.getsid(server_pid) != os.getsid(0)  # a Ctrl-C here does not reach it
            state = probe(41, return_state=True)
            assert state.result() == 42
            run_id = state.state_details.flow_run_id
            assert run_id is not None
            with get_client(sync_client=True) as client:  # the run is in that server's database
                run = client.read_flow_run(run_id)
            assert run.state is not None and run.state.is_completed()
        assert PREFECT_API_URL.value() is None
    assert "SEGSTYLE_DEVICE_SLOTS" not in os.environ
    assert not _listening(port)
    assert not Path(f"/proc/{server_pid}").exists()  # stopped and reaped, not left behind
    assert f"Started server process [{server_pid}]" in log.read_text()


@pytest.mark.slow
def test_temporary_server_dies_with_a_sigkilled_cli(tmp_path: Path) -> None:
    """No server answers at the configured address: a temporary one starts, and stops
    listening within seconds of its process being SIGKILLed (it never gets to clean up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.pop("SEGSTYLE_DEVICE_SLOTS", None)
    env.update(
        PREFECT_HOME=str(tmp_path / "home"),
        PREFECT_SERVER_API_PORT=str(free_port()),  # nothing listens there
        PYTHONUNBUFFERED="1",
        PREFECT_SERVER_LOGGING_LEVEL="DEBUG",  # the server's output goes to the log file only
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="DEBUG",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=str(_STARTUP_TIMEOUT_S),
    )
    log = tmp_path / "logs" / "prefect-server.log"
    cli = subprocess.Popen(
        [sys.executable, "-c", _ENTER, str(log), "600"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        line = cli.stdout.readline() if cli.stdout else b""  # blocks until entered (or exit)
        assert line, cli.stderr.read().decode() if cli.stderr else ""
        entered = json.loads(line)
        port = int(entered["url"].rsplit(":", 1)[1].split("/")[0])
        assert entered["url"] == f"http://127.0.0.1:{port}/api"
        assert entered["slots"] == "host"
        assert _listening(port)
        servers = _processes_with("--port", str(port))
        assert len(servers) == 1 and servers != [cli.pid]
        assert os.getsid(servers[0]) != cli.pid  # its own session: a Ctrl-C reaches the CLI only

        cli.kill()
        assert cli.wait(timeout=10) == -9
        killed = time.monotonic()
        while _listening(port) or _processes_with("--port", str(port)):
            assert time.monotonic() - killed < 10, "the temporary server outlived its CLI"
            time.sleep(0.1)
        print(f"temporary server gone {time.monotonic() - killed:.2f} s after SIGKILL")
        assert f"Started server process [{servers[0]}]" in log.read_text()
        assert b"Started server process" not in (cli.stderr.read() if cli.stderr else b"")
    finally:
        stop_process_group(cli, grace_s=5)
        for pid in _processes_with("--port", str(locals().get("port", 0))):
            os.kill(pid, 9)
