"""prefect.yaml against a real Prefect server, the way a user runs it.

A ``prefect server start`` subprocess (scheduler every 2 s), the work pool, ``prefect deploy
--all`` of this checkout's prefect.yaml; then (a) the scheduler creates scheduled runs for every
deployment whose schedule is active, and none for the others; (b) a ``prefect worker start``
subprocess runs the offline demo deployment, triggered with ``prefect deployment run``, to
Completed, and its Parquet file reads with pandas. The demo dataset is a fresh folder: the
deployment must generate it (``make demo`` need not have run).

Parameter names are looked up, not spelled out: the run overrides only the output folder
(property ``out``), the image limit (property ``limit``, found through the deployment's
parameter schema, nested models included) and the dataset folder (the parameter whose deployed
value is ``data/demo``).
"""

from __future__ import annotations

import copy
import json
import re
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

pytestmark = pytest.mark.slow

POOL = "segstyle-process"
OFFLINE = "segment_and_stylize/demo-offline-nightly"
#: The offline deployment's dataset folder, relative to the checkout (SEGSTYLE_HOME).
DEMO_DATASET = "data/demo"
SCHEDULE_TIMEOUT_S = 60
RUN_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectService) -> dict[str, Any]:
    """``make deploy``'s two commands against the test server; the deployments by full name."""
    prefect_server.run(["work-pool", "create", POOL, "--type", "process"])
    started = time.monotonic()
    prefect_server.run(
        ["--no-prompt", "deploy", "--all"], env=prefect_server.env(SEGSTYLE_HOME=str(REPO_ROOT))
    )
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
        + "\n".join(tracebacks(prefect_server.log_text())[:1])
    )
    print(f"scheduled runs for {sorted(active)} appeared {waited:.1f} s after the deploy started")
    # the scheduler has looped several times by now: an inactive schedule must stay silent
    scheduled_inactive = {name: counts[d.id] for name, d in inactive.items() if counts[d.id]}
    assert not scheduled_inactive, f"runs scheduled for inactive schedules: {scheduled_inactive}"


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


def _small_offline_params(deployment: Any, dataset: Path, out: Path) -> dict[str, Any]:
    """The deployment's own parameters, with a fresh dataset folder, ``out`` and one image."""
    params = copy.deepcopy(deployment.parameters)
    schema = deployment.parameter_openapi_schema or {}
    _set(params, _one(_leaf_paths(params, DEMO_DATASET), DEMO_DATASET), str(dataset))
    _set(params, _one(_property_paths(schema, "out"), "out"), str(out))
    _set(params, _one(_property_paths(schema, "limit"), "limit"), 1)
    return params


# -- the worker -------------------------------------------------------------------------------


@pytest.fixture
def worker(prefect_server: PrefectService, tmp_path: Path) -> Iterator[Path]:
    """``prefect worker start --pool segstyle-process`` (polling every 2 s); yields its log.

    It would also start a nightly run that falls due while it runs (02:30 Europe/Zurich): a
    test run at that minute leaves one more run behind, in the checkout's artifacts/.
    """
    log_path = tmp_path / "worker.log"
    env = prefect_server.env(SEGSTYLE_HOME=str(REPO_ROOT), PREFECT_WORKER_QUERY_SECONDS="2")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [prefect_executable(), "worker", "start", "--pool", POOL],
            cwd=tmp_path,  # the deployment's pull step moves the run into SEGSTYLE_HOME
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


def test_worker_runs_offline_deployment(
    prefect_server: PrefectService, deployed: dict[str, Any], worker: Path, tmp_path: Path
) -> None:
    deployment = deployed["deployments"][OFFLINE]
    dataset, out = tmp_path / "demo-dataset", tmp_path / "out"
    assert not dataset.exists()
    params = _small_offline_params(deployment, dataset, out)

    started = time.monotonic()
    triggered = prefect_server.run(["deployment", "run", OFFLINE, "--params", json.dumps(params)])
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered.stdout)
    assert match, f"no flow run id in:\n{triggered.stdout}"
    flow_run_id = match.group(1)

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        with prefect_server.client() as client:
            flow_run = client.read_flow_run(flow_run_id)
        if (flow_run.state and flow_run.state.is_final()) or time.monotonic() > deadline:
            break
        time.sleep(2)
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

    found = tracebacks(worker_log)
    assert not found, "the worker's log holds tracebacks:\n\n" + "\n\n".join(found[:3])
