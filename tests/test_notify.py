"""Failure notifications (``segstyle.flows.notify``): a failed nightly run reaches a webhook.

Fast: the command without its setting changes nothing and says how to turn it on; running it
twice leaves one automation, pointed at the latest URL; ``prefect.yaml`` tags every deployment
with a schedule for it.

Slow, the way a user meets it: a real ``prefect server start`` (its triggers and actions
services as shipped), an HTTP receiver on 127.0.0.1 as the webhook, the automation created by
``python -m segstyle.flows.notify`` (what ``make deploy`` runs), three deployments of a small
failing flow in a process work pool and a ``prefect worker start``: a Failed and a Crashed run of
tagged deployments each POST the run's name and its first error; a failed run of an untagged
deployment posts nothing.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from segstyle.flows import notify
from tests.prefect_service import (
    REPO_ROOT,
    PrefectService,
    prefect_executable,
    stop_process_group,
)

POOL = "notify-process"
#: How long the webhook may take after a run ends (the server's event pipeline).
NOTIFY_TIMEOUT_S = 120
RUN_TIMEOUT_S = 180
#: The first error of the failing flow: quotes, angle brackets and a newline must reach the
#: webhook intact, inside valid JSON.
FIRST_ERROR = 'Failed 1 of 3 images; first: "b.png": corrupt <image>\nsecond line'

FLOW_SOURCE = f"""
import os

from prefect import flow


@flow(name="notify-probe")
def probe(crash: bool = False) -> None:
    if crash:
        os._exit(3)  # the process dies: the worker reports the run Crashed
    raise ValueError({FIRST_ERROR!r})
"""


def _notify_command(server: PrefectService, url: str | None) -> subprocess.CompletedProcess[str]:
    """``python -m segstyle.flows.notify`` against ``server``, as ``make deploy`` runs it."""
    env = server.env()
    env.pop(notify.WEBHOOK_ENV, None)
    if url is not None:
        env[notify.WEBHOOK_ENV] = url
    return subprocess.run(
        [sys.executable, "-m", "segstyle.flows.notify"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- fast ---------------------------------------------------------------------------------------


def test_without_the_setting_nothing_changes(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv(notify.WEBHOOK_ENV, raising=False)
    # no API is configured or reachable: the command must not need one
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert notify.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and notify.WEBHOOK_ENV in out and "make deploy" in out


@pytest.mark.parametrize("url", ["hooks.example.org/x", "ftp://example.org/x", "http://"])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=notify.WEBHOOK_ENV):
        notify.check_webhook_url(url)


def test_nightly_deployments_carry_the_tag() -> None:
    """Every deployment of prefect.yaml with a schedule (active or not) notifies."""
    deployments = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    scheduled = [d for d in deployments if d.get("schedules")]
    assert scheduled, "prefect.yaml has no scheduled deployment"
    untagged = [d["name"] for d in scheduled if notify.NIGHTLY_TAG not in d.get("tags", [])]
    assert not untagged, f"scheduled deployments without the tag {notify.NIGHTLY_TAG!r}: {untagged}"


# -- against a real server ----------------------------------------------------------------------


class _Receiver(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that keeps every request's path and body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None, bytes]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, _, body in self.requests]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.requests.append((self.path, self.headers.get("Content-Type"), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        """Quiet: the test reads ``requests``."""


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_running_it_twice_leaves_one_automation(
    prefect_api: None, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client

    def named() -> list[Any]:
        with get_client(sync_client=True) as client:
            return client.read_automations_by_name(notify.AUTOMATION_NAME)

    notify.ensure_failure_webhook("http://127.0.0.1:9/first")
    saved = Webhook.load(notify.AUTOMATION_NAME)
    assert isinstance(saved, Webhook) and saved._block_document_id is not None
    with get_client(sync_client=True) as client:  # a duplicate, as from two racing deploys
        client.create_automation(notify.failure_automation(saved._block_document_id))
    assert len(named()) == 2
    monkeypatch.setenv(notify.WEBHOOK_ENV, "http://127.0.0.1:9/second")
    assert notify.main([]) == 0
    (automation,) = named()
    assert str(automation.id) in capsys.readouterr().out and automation.enabled
    (action,) = automation.actions
    webhook = Webhook.load(notify.AUTOMATION_NAME)
    assert isinstance(webhook, Webhook)
    assert action.block_document_id == webhook._block_document_id
    assert webhook.url.get_secret_value() == "http://127.0.0.1:9/second"
    # without the setting, the automation stays as it was
    monkeypatch.delenv(notify.WEBHOOK_ENV)
    assert notify.main([]) == 0
    assert [a.id for a in named()] == [automation.id]


def _deploy_probe(server: PrefectService, source: Path) -> dict[str, Any]:
    """Three deployments of the probe flow: tagged failing, tagged crashing, untagged failing."""
    from prefect import Flow, flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server.run(["work-pool", "create", POOL, "--type", "process"])
    (source / "probe_flow.py").write_text(FLOW_SOURCE)
    specs = {
        "nightly-fails": ([notify.NIGHTLY_TAG], {}),
        "nightly-crashes": ([notify.NIGHTLY_TAG], {"crash": True}),
        "on-demand-fails": (["segstyle"], {}),
    }
    ids = {}
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        probe = flow.from_source(source=str(source), entrypoint="probe_flow.py:probe")
        assert isinstance(probe, Flow)
        for name, (tags, parameters) in specs.items():
            ids[name] = probe.deploy(
                name=name,
                work_pool_name=POOL,
                tags=tags,
                parameters=parameters,
                build=False,
                push=False,
                print_next_steps=False,
            )
    return ids


def _run_to_end(server: PrefectService, deployment_id: Any, worker_log: Path) -> Any:
    """Start a run of the deployment; wait until it is final; return it."""
    with server.client() as client:
        run = client.create_flow_run_from_deployment(deployment_id)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            run = client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(1)
    raise AssertionError(
        f"run {run.name} still {run.state.name if run.state else None} after {RUN_TIMEOUT_S} s; "
        f"worker log:\n{worker_log.read_text(errors='replace')[-4000:]}"
    )


@pytest.mark.slow
def test_failed_and_crashed_nightly_runs_reach_the_webhook(
    prefect_server: PrefectService, receiver: _Receiver, tmp_path: Path
) -> None:
    done = _notify_command(prefect_server, receiver.url)
    assert done.returncode == 0, done.stderr
    ids = _deploy_probe(prefect_server, tmp_path)

    worker_log = tmp_path / "worker.log"
    with open(worker_log, "ab") as log:
        worker = subprocess.Popen(
            [prefect_executable(), "worker", "start", "--pool", POOL],
            cwd=tmp_path,
            env=prefect_server.env(PREFECT_WORKER_QUERY_SECONDS="1"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # the untagged run first: once the tagged runs' calls are in, its call would be too
        quiet = _run_to_end(prefect_server, ids["on-demand-fails"], worker_log)
        failed = _run_to_end(prefect_server, ids["nightly-fails"], worker_log)
        crashed = _run_to_end(prefect_server, ids["nightly-crashes"], worker_log)
    finally:
        stop_process_group(worker)
    assert (quiet.state.type.value, failed.state.type.value, crashed.state.type.value) == (
        "FAILED",
        "FAILED",
        "CRASHED",
    )

    deadline = time.monotonic() + NOTIFY_TIMEOUT_S
    while len(receiver.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # a late third call would be the untagged run's
    assert {(path, kind) for path, kind, _ in receiver.requests} == {("/hook", "application/json")}
    bodies = {body["flow_run"]: body for body in receiver.bodies()}
    assert set(bodies) == {failed.name, crashed.name}, (
        f"webhook calls for {sorted(bodies)}; expected {failed.name} and {crashed.name} only; "
        f"server log {prefect_server.log_path}"
    )

    on_failure = bodies[failed.name]
    assert on_failure["message"] == failed.state.message
    assert FIRST_ERROR in on_failure["message"]
    assert on_failure["state"] == "Failed" and on_failure["deployment"] == "nightly-fails"
    assert on_failure["flow_run_id"] == str(failed.id)
    assert failed.name in on_failure["text"] and FIRST_ERROR in on_failure["text"]

    on_crash = bodies[crashed.name]
    assert on_crash["state"] == "Crashed" and on_crash["deployment"] == "nightly-crashes"
    assert on_crash["message"] == crashed.state.message and "status code: 3" in on_crash["message"]
