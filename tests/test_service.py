"""prefect.yaml against a real Prefect server, the way a user runs it.

A ``prefect server start`` subprocess (scheduler every 2 s), the work pool, a plain ``prefect
deploy --all`` of this checkout's prefect.yaml in the checkout (as its header says, no other
environment variable); then (a) the scheduler creates scheduled runs for every deployment whose
schedule is active, and none for the others; (b) a ``prefect worker start`` subprocess, started
in another folder, runs the offline demo deployment, triggered with ``prefect deployment run``,
to Completed: its readable name, its run folder, its Parquet file (read with pandas), no
traceback in the worker's log. The demo dataset is a fresh folder: the deployment must generate
it (``make demo`` need not have run). (c) A run with a truncated image ends Failed with a short
state message and a quiet worker log; (d) a run whose process is killed is retried by the
worker and completes. No run leaves a pickle in Prefect's result storage or its output folder.

Parameter names are looked up, not spelled out: the run overrides only the output folder
(property ``out``), the image limit (property ``limit``, found through the deployment's
parameter schema, nested models included) and the dataset folder (the parameter whose deployed
value is ``data/demo``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.prefect_service import (
    REPO_ROOT,
    PrefectService,
    prefect_executable,
    stop_process_group,
    tracebacks,
)
from tests.test_flows import pickled_files

pytestmark = pytest.mark.slow

POOL = "segstyle-process"
OFFLINE = "segment_and_stylize/demo-offline-nightly"
#: The offline deployment's dataset folder, relative to the checkout.
DEMO_DATASET = "data/demo"
SCHEDULE_TIMEOUT_S = 60
RUN_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectService) -> dict[str, Any]:
    """``make deploy``'s two commands against the test server, in the checkout and with no
    segstyle environment variable; the deployments by full name."""
    prefect_server.run(["work-pool", "create", POOL, "--type", "process"])
    started = time.monotonic()
    env = {k: v for k, v in prefect_server.env().items() if not k.startswith("SEGSTYLE_")}
    prefect_server.run(["--no-prompt", "deploy", "--all"], cwd=REPO_ROOT, env=env)
    with prefect_server.client() as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        deployments = {f"{flows[d.flow_id]}/{d.name}": d for d in client.read_deployments()}
    return {"deployments": deployments, "deployed_at": started}


def _has_active_schedule(deployment: Any) -> bool:
    return not deployment.paused and any(schedule.active for schedule in deployment.schedules)


def _scheduled_counts(server: PrefectService, deployment_ids: list[Any]) -> dict[Any, int]:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with server.client() as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
        )
    counts = dict.fromkeys(deployment_ids, 0)
    for run in runs:
        counts[run.deployment_id] += 1
    return counts


def test_scheduler_creates_runs_for_every_active_schedule(
    prefect_server: PrefectService, deployed: dict[str, Any]
) -> None:
    deployments = deployed["deployments"]
    active = {name: d for name, d in deployments.items() if _has_active_schedule(d)}
    inactive = {name: d for name, d in deployments.items() if name not in active}
    # a fresh machine gets nightly runs that can succeed there: the offline one is on
    assert OFFLINE in active, f"{OFFLINE} has no active schedule; deployed: {sorted(deployments)}"

    ids = [d.id for d in deployments.values()]
    deadline = time.monotonic() + SCHEDULE_TIMEOUT_S
    while True:
        counts = _scheduled_counts(prefect_server, ids)
        missing = sorted(name for name, d in active.items() if counts[d.id] == 0)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    waited = time.monotonic() - deployed["deployed_at"]
    assert not missing, (
        f"no scheduled run within {SCHEDULE_TIMEOUT_S} s of the deploy for: {missing}; "
        f"server log: {prefect_server.log_path}\n"
        + "\n".join(tracebacks(prefect_server.log_text(), server_log=True)[:1])
    )
    print(f"scheduled runs for {sorted(active)} appeared {waited:.1f} s after the deploy started")
    # the scheduler has looped several times by now: an inactive schedule must stay silent
    scheduled_inactive = {name: counts[d.id] for name, d in inactive.items() if counts[d.id]}
    assert not scheduled_inactive, f"runs scheduled for inactive schedules: {scheduled_inactive}"


def test_deployments_run_in_the_checkout_and_the_dataset_ones_one_at_a_time(
    deployed: dict[str, Any],
) -> None:
    for name, deployment in deployed["deployments"].items():
        assert deployment.entrypoint.startswith("segstyle.flows."), (name, deployment.entrypoint)
        (step,) = deployment.pull_steps or [None]
        assert step == {
            "prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}
        }, (name, deployment.pull_steps)
        if name.startswith("segment_and_stylize/"):
            limit = deployment.global_concurrency_limit
            assert limit is not None and limit.limit == 1 and limit.active, name
            options = deployment.concurrency_options
            assert options is not None and options.collision_strategy == "ENQUEUE", name


# -- parameters, found rather than named -------------------------------------------------------


def _property_paths(schema: dict[str, Any], name: str) -> list[tuple[str, ...]]:
    """Paths to every property called ``name`` in a JSON schema, through ``$ref`` s."""
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    found: list[tuple[str, ...]] = []

    def walk(node: dict[str, Any], path: tuple[str, ...], seen: frozenset[str]) -> None:
        if "$ref" in node:
            ref = node["$ref"].rsplit("/", 1)[-1]
            if ref in seen or ref not in definitions:
                return
            node, seen = definitions[ref], seen | {ref}
        for combinator in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(combinator, []):
                walk(sub, path, seen)
        for key, sub in node.get("properties", {}).items():
            if key == name:
                found.append((*path, key))
            walk(sub, (*path, key), seen)

    walk(schema, (), frozenset())
    return sorted(set(found))


def _leaf_paths(params: Any, value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths to every leaf of nested dicts that equals ``value``."""
    if isinstance(params, dict):
        return [p for k, v in params.items() for p in _leaf_paths(v, value, (*path, k))]
    return [path] if params == value else []


def _set(params: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(params.get(key), dict):
            params[key] = {}
        params = params[key]
    params[path[-1]] = value


def _one(paths: list[tuple[str, ...]], what: str) -> tuple[str, ...]:
    assert len(paths) == 1, f"expected one parameter for {what}, found {paths}"
    return paths[0]


def _small_offline_params(
    deployment: Any, dataset: Path, out: Path, limit: int | None = 1
) -> dict[str, Any]:
    """The deployment's own parameters, with the dataset folder ``dataset``, ``out`` and at
    most ``limit`` images."""
    params = copy.deepcopy(deployment.parameters)
    schema = deployment.parameter_openapi_schema or {}
    _set(params, _one(_leaf_paths(params, DEMO_DATASET), DEMO_DATASET), str(dataset))
    _set(params, _one(_property_paths(schema, "out"), "out"), str(out))
    _set(params, _one(_property_paths(schema, "limit"), "limit"), limit)
    return params


# -- the worker -------------------------------------------------------------------------------


@pytest.fixture
def worker(prefect_server: PrefectService, tmp_path: Path) -> Iterator[Path]:
    """``prefect worker start --pool segstyle-process`` (polling every 2 s); yields its log.

    It would also start a nightly run that falls due while it runs (02:30 Europe/Zurich): a
    test run at that minute leaves one more run behind, in the checkout's artifacts/.
    """
    log_path = tmp_path / "worker.log"
    env = prefect_server.env(PREFECT_WORKER_QUERY_SECONDS="2")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [prefect_executable(), "worker", "start", "--pool", POOL],
            cwd=tmp_path,  # the deployment's pull step moves the run into the checkout
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log_path
    finally:
        stop_process_group(process)


def _trigger(server: PrefectService, params: dict[str, Any]) -> str:
    """``prefect deployment run`` of the offline deployment with ``params``; the flow run id."""
    triggered = server.run(["deployment", "run", OFFLINE, "--params", json.dumps(params)])
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered.stdout)
    assert match, f"no flow run id in:\n{triggered.stdout}"
    return match.group(1)


def _wait(server: PrefectService, flow_run_id: str, until: Any) -> Any:
    """The flow run once ``until(flow_run)`` holds, or when :data:`RUN_TIMEOUT_S` is over."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        with server.client() as client:
            flow_run = client.read_flow_run(flow_run_id)
        if until(flow_run) or time.monotonic() > deadline:
            return flow_run
        time.sleep(1)


def _final(flow_run: Any) -> bool:
    return flow_run.state is not None and flow_run.state.is_final()


def _started(flow_run: Any) -> bool:
    return _final(flow_run) or (flow_run.state is not None and flow_run.state.is_running())


def _no_pickles(server: PrefectService, out: Path) -> None:
    found = pickled_files(server.home / "storage", out)
    assert not found, f"pickles: {found}"


def test_worker_runs_offline_deployment(
    prefect_server: PrefectService, deployed: dict[str, Any], worker: Path, tmp_path: Path
) -> None:
    deployment = deployed["deployments"][OFFLINE]
    dataset, out = tmp_path / "demo-dataset", tmp_path / "out"
    assert not dataset.exists()
    params = _small_offline_params(deployment, dataset, out)

    started = time.monotonic()
    flow_run_id = _trigger(prefect_server, params)
    flow_run = _wait(prefect_server, flow_run_id, _final)
    elapsed = time.monotonic() - started
    state = flow_run.state
    worker_log = worker.read_text(errors="replace")
    assert state is not None and state.is_completed(), (
        f"flow run {flow_run_id} is {state.name if state else None} after {elapsed:.0f} s "
        f"({state.message if state else ''}); worker log {worker}:\n{worker_log[-6000:]}"
    )
    print(f"{OFFLINE} ran to Completed in {elapsed:.1f} s (trigger to final state)")

    assert (dataset / "leftImg8bit").is_dir(), "the run did not generate its missing dataset"
    parquet = sorted((out / "metrics").rglob("*.parquet"))
    assert [p.stem for p in parquet] == [flow_run_id], parquet

    import pandas as pd

    frame = pd.read_parquet(parquet[0])
    assert len(frame) >= 1
    assert set(frame["status"]) == {"ok"}, frame[["image_id", "status", "error"]]
    assert frame["image_id"].nunique() == 1  # limit 1

    # a readable name (city, segmenter, stylizer, date); the run's folder adds the id's start
    assert re.fullmatch(r"zurich-grabcut-feedforward-\d{4}-\d{2}-\d{2}", flow_run.name)
    assert set(frame["run_id"]) == {flow_run.name}
    assert [p.name for p in (out / "runs").iterdir()] == [f"{flow_run.name}-{flow_run_id[:8]}"]
    _no_pickles(prefect_server, out)

    found = tracebacks(worker_log)
    assert not found, "the worker's log holds tracebacks:\n\n" + "\n\n".join(found[:3])


def test_a_bad_image_fails_the_run_quietly_with_a_short_message(
    prefect_server: PrefectService,
    deployed: dict[str, Any],
    worker: Path,
    demo_root: Path,
    tmp_path: Path,
) -> None:
    dataset, out = Path(shutil.copytree(demo_root, tmp_path / "cityscapes")), tmp_path / "out"
    victim = sorted((dataset / "leftImg8bit" / "train" / "zurich").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated PNG
    params = _small_offline_params(deployed["deployments"][OFFLINE], dataset, out, limit=None)

    flow_run_id = _trigger(prefect_server, params)
    state = _wait(prefect_server, flow_run_id, _final).state
    worker_log = worker.read_text(errors="replace")
    assert state is not None and state.is_failed(), (state, worker_log[-6000:])
    victim_id = victim.name.removesuffix("_leftImg8bit.png")
    message = state.message or ""
    assert message.startswith(f"1 of 3 images failed; first: {victim_id}: "), message
    assert len(message) <= 200, message
    # one log line for the image, and no traceback anywhere
    assert sum(f"{victim_id} failed:" in line for line in worker_log.splitlines()) == 1
    found = tracebacks(worker_log)
    assert not found, "the worker's log holds tracebacks:\n\n" + "\n\n".join(found[:3])
    _no_pickles(prefect_server, out)


def _kill_flow_run_processes(flow_run_id: str) -> int:
    """SIGKILL every process of this user that runs the flow run (its environment names it);
    how many."""
    import psutil

    killed = 0
    for process in psutil.process_iter():
        try:
            if process.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                os.kill(process.pid, signal.SIGKILL)
                killed += 1
        except (psutil.Error, ProcessLookupError):
            continue
    return killed


def _crash_retry_of(server: PrefectService, flow_run_id: str) -> Any:
    """The flow run that retries the crashed ``flow_run_id`` (its idempotency key names it),
    once it exists; else ``None`` after :data:`RUN_TIMEOUT_S`."""
    from segstyle.flows.runs import CRASH_RETRY_TAG

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        with server.client() as client:
            found = [
                run
                for run in client.read_flow_runs()
                if run.idempotency_key == f"{CRASH_RETRY_TAG}{flow_run_id}"
            ]
        if found:
            return found[0]
        time.sleep(1)
    return None


def test_a_killed_run_is_retried_and_completes(
    prefect_server: PrefectService, deployed: dict[str, Any], worker: Path, tmp_path: Path
) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    out = tmp_path / "out"
    params = _small_offline_params(deployed["deployments"][OFFLINE], tmp_path / "demo", out)
    flow_run_id = _trigger(prefect_server, params)
    running = _wait(prefect_server, flow_run_id, _started)
    assert running.state.is_running(), running.state
    assert _kill_flow_run_processes(flow_run_id) >= 1

    crashed = _wait(prefect_server, flow_run_id, _final)
    retry = _crash_retry_of(prefect_server, flow_run_id)
    worker_log = worker.read_text(errors="replace")
    with prefect_server.client() as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[crashed.id])))
    assert crashed.state.is_crashed() and retry is not None, (
        f"{crashed.state!r}; retry {retry}; run logs:\n"
        + "\n".join(f"{log.name}: {log.message}" for log in logs)
        + f"\nworker log:\n{worker_log[-6000:]}"
    )
    assert "crash-retry-1" in retry.tags and retry.parameters == crashed.parameters

    done = _wait(prefect_server, str(retry.id), _final)
    assert done.state.is_completed(), (done.state, worker.read_text(errors="replace")[-6000:])
    import pandas as pd

    frame = pd.read_parquet(next((out / "metrics").rglob(f"{retry.id}.parquet")))
    assert set(frame["status"]) == {"ok"} and frame["image_id"].nunique() == 1
    _no_pickles(prefect_server, out)
