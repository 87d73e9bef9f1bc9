"""The Prefect flows end to end on the generated dataset with the offline backends.

Checks failure isolation, caching across runs, the retry of a failed flow run that recomputes
only the failed image, the Parquet contract, the Dask task runner, and the core's log lines in
the run's logs; the run's readable name and folder, the failed run's short state message, and
that no run leaves a pickle in Prefect's result storage or the output folder.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pytest

from segstyle_core.stylize import StylizerConfig
from tests.flow_params import offline_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

REPO = Path(__file__).resolve().parents[1]
STAGES = ("gt", "segment", "stylize", "composite", "figures")
MODEL_STAGES = ("gt", "segment", "stylize", "composite")


def _is_pickle(data: bytes) -> bool:
    """Whether ``data`` is a pickle: raw (every protocol >= 2 starts with PROTO, 0x80), in
    base64 (how Prefect's result storage writes one), or inside a result record (JSON) whose
    serializer is a pickle one or whose ``result`` is one."""
    data = data.strip()
    if data[:1] == b"\x80":
        return True
    with contextlib.suppress(ValueError):
        if base64.b64decode(data, validate=True)[:1] == b"\x80":
            return True
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(record, dict):
        return False
    serializer = (record.get("metadata") or {}).get("serializer") or {}
    result = record.get("result")
    return "pickle" in str(serializer.get("type", "")) or (
        isinstance(result, str) and _is_pickle(result.encode())
    )


def pickled_files(*folders: Path) -> list[Path]:
    """The files under ``folders`` that hold a pickle (:func:`_is_pickle`)."""
    return [
        path
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and _is_pickle(path.read_bytes())
    ]


def _prefect_storage() -> Path:
    """Prefect's local result storage of the test session (tests/conftest.py)."""
    return Path(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])


def _run(root: Path, out: Path) -> Any:
    from segstyle.flows.dataset import segment_and_stylize

    return segment_and_stylize(**offline_params(root, out), return_state=True)


def _task_runs(flow_run_id: UUID, stage_runs: int = 0) -> list[Any]:
    """The flow run's task runs, polled until ``stage_runs`` stage task runs are final.

    Prefect reports task runs to its server through events, so they arrive shortly after the
    flow returns.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()  # send every pending task-run event to the server
    deadline = time.monotonic() + 60
    while True:
        time.sleep(1)  # reads between the server's writes (SQLite)
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        final = [t for t in _stage_runs(runs) if t.state and t.state.is_final()]
        if len(final) >= stage_runs or time.monotonic() > deadline:
            return runs


def _stage_runs(task_runs: list[Any]) -> list[Any]:
    return [
        t for t in task_runs if t.name.split("-")[0] in ("gt", "segment", "stylize", "composite")
    ]


@pytest.fixture()
def dataset(demo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the demo dataset (tests corrupt files in it)."""
    return Path(shutil.copytree(demo_root, tmp_path / "cityscapes"))


def test_run_writes_rows_and_a_second_run_is_all_cached(dataset: Path, tmp_path: Path) -> None:
    first = _run(dataset, tmp_path / "out")
    assert first.is_completed(), first.message
    parquet = Path(first.result())
    frame = pd.read_parquet(parquet)
    assert set(frame["status"]) == {"ok"}
    assert frame["image_id"].nunique() == 3
    assert set(frame["segmenter"]) == {"grabcut"} and set(frame["stylizer"]) == {"feedforward"}
    assert frame["stylizer_weights_sha256"].str.len().eq(64).all()
    assert frame["iou_instance"].between(0, 1).all() and frame["iou"].between(0, 1).all()
    # the union of an image's instance masks covers more of the class than any one of them
    assert (frame["image_iou"] >= frame["iou"] - 1e-9).all() and frame["image_iou"].gt(0.3).all()
    assert frame["instance_id"].ge(26000).all()  # prompts come from car instances
    for column in ("composite_path", "panel_path", "mask_path", "stylized_path"):
        for path in frame[column].unique():
            assert Path(path).is_file() and str(tmp_path / "out" / "runs") in path
    report = Path(frame["panel_path"].iloc[0]).parents[1] / "report.html"
    assert report.is_file() and frame["image_id"].iloc[0] in report.read_text()
    # a readable name, and the run's folder: the name plus the start of the flow run's id
    (name,) = frame["run_id"].unique()
    assert name == f"zurich-grabcut-feedforward-{dt.date.today().isoformat()}"
    (flow_run_id,) = frame["flow_run_id"].unique()
    assert report.parent == tmp_path / "out" / "runs" / f"{name}-{flow_run_id[:8]}"

    second = _run(dataset, tmp_path / "out")
    assert second.is_completed()
    runs = _task_runs(second.state_details.flow_run_id, len(MODEL_STAGES) * 3)
    stage_runs = [t for t in _stage_runs(runs) if t.name.split("-")[0] in MODEL_STAGES]
    assert len(stage_runs) == len(MODEL_STAGES) * 3
    assert {t.state.name for t in stage_runs} == {"Cached"}
    again = pd.read_parquet(second.result())
    assert again["iou"].tolist() == frame["iou"].tolist()
    assert len(pd.read_parquet(tmp_path / "out" / "metrics")) == 2 * len(frame)


def test_bad_image_fails_alone_and_a_retry_recomputes_only_it(
    dataset: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from segstyle.flows.dataset import segment_and_stylize
    from segstyle_core import results

    images = sorted((dataset / "leftImg8bit" / "train" / "zurich").glob("*.png"))
    victim = images[1]
    good_bytes = victim.read_bytes()
    victim.write_bytes(good_bytes[: len(good_bytes) // 3])  # truncated PNG

    state = _run(dataset, tmp_path / "out")
    assert state.is_failed()
    victim_id = victim.name.removesuffix("_leftImg8bit.png")
    # the UI's state column: the count and the first error, whole words, at most 200 chars
    message = state.message or ""
    assert message.startswith(f"1 of 3 images failed; first: {victim_id}: gt: "), message
    assert len(message) <= 200 and "\n" not in message
    # no pickle anywhere: not the failure, not a task's
    assert not pickled_files(_prefect_storage(), tmp_path / "out")
    flow_run_id = state.state_details.flow_run_id
    parquet = results.run_file(
        tmp_path / "out" / "metrics", "segment_and_stylize", str(flow_run_id)
    )
    frame = pd.read_parquet(parquet)
    failed = frame[frame["status"] == "failed"]
    assert failed["image_id"].unique().tolist() == [victim.name.removesuffix("_leftImg8bit.png")]
    assert victim.name in failed["error"].iloc[0]
    assert (frame[frame["status"] == "ok"]["image_id"].nunique()) == 2

    victim.write_bytes(good_bytes)
    before = {t.id for t in _task_runs(flow_run_id, len(STAGES) * 2 + 1)}
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Scheduled(message="retry"), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    retried = run_flow(
        segment_and_stylize, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
    )
    assert retried.is_completed(), retried.message
    everything = _task_runs(flow_run_id, len(STAGES) * 2 + 1 + len(STAGES) * 3)
    new_runs = [t for t in _stage_runs(everything) if t.id not in before]
    recomputed = sorted(t.name for t in new_runs if t.state.name != "Cached")
    style = Path(StylizerConfig().style_path()).stem  # the default style's file
    assert recomputed == sorted(
        [
            *(f"{s}-{victim_id}" for s in ("gt", "segment", "composite")),
            f"stylize-{victim_id}-{style}",
        ]
    )
    assert sum(t.state.name == "Cached" for t in new_runs) == 2 * 4

    after = pd.read_parquet(parquet)
    assert set(after["status"]) == {"ok"} and after["image_id"].nunique() == 3
    assert not after.duplicated(["image_id", "prompt_index"]).any()
    assert [p.name for p in parquet.parent.iterdir()] == [parquet.name]
    # the retry keeps the run's name and folder
    assert set(after["run_id"]) == set(frame["run_id"])
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 1
    assert not pickled_files(_prefect_storage(), tmp_path / "out")


def test_evaluate_flow_scores_without_styling(dataset: Path, tmp_path: Path) -> None:
    from segstyle.flows.dataset import evaluate_segmentation
    from segstyle_core.config import PromptConfig

    params = offline_params(dataset, tmp_path / "out", city="aachen", classes=("car", "person"))
    state = evaluate_segmentation(
        dataset=params["dataset"],
        prompts=PromptConfig(source="largest"),
        segmenter=params["segmenter"],
        outputs=params["outputs"],
        return_state=True,
    )
    assert state.is_completed(), state.message
    frame = pd.read_parquet(state.result())
    assert frame["stylizer"].isna().all() and frame["composite_path"].isna().all()
    assert frame.groupby("image_id").size().eq(1).all()  # largest: one prompt per image
    assert frame["classes"].eq("car,person").all()


def test_dask_task_runner_runs_the_flow(dataset: Path, tmp_path: Path) -> None:
    from prefect_dask import DaskTaskRunner

    from segstyle.flows.dataset import segment_and_stylize

    flow = segment_and_stylize.with_options(
        task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "processes": False})
    )
    from segstyle_core.config import PromptConfig

    params = offline_params(dataset, tmp_path / "out", limit=1)
    state = flow(**{**params, "prompts": PromptConfig(source="largest")}, return_state=True)
    assert state.is_completed(), state.message
    assert pd.read_parquet(state.result())["status"].eq("ok").all()


def test_the_core_logs_reach_the_run_logs_through_prefects_setting(
    dataset: Path, tmp_path: Path
) -> None:
    """A flow run in its own process, set up as the CLI, the Makefile and prefect.yaml's
    workers set it up (``PREFECT_LOGGING_EXTRA_LOGGERS=segstyle_core``): the stylize stage's
    progress line (INFO, from ``segstyle_core``) is in the flow run's logs on the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL

    script = (
        "import sys; from pathlib import Path\n"
        "from segstyle.flows.dataset import segment_and_stylize\n"
        "from tests.flow_params import offline_params\n"
        "params = offline_params(Path(sys.argv[1]), Path(sys.argv[2]), limit=1)\n"
        "print(segment_and_stylize(**params, return_state=True).state_details.flow_run_id)\n"
    )
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOGGING_EXTRA_LOGGERS": "segstyle_core",
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(dataset), str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    flow_run_id = UUID(done.stdout.strip().splitlines()[-1])
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    core = [log for log in logs if log.name.startswith("segstyle_core.")]
    assert any(
        log.name == "segstyle_core.stages.stylize"
        and "step 2/2" in log.message
        and log.task_run_id is not None
        for log in core
    ), [(log.name, log.message) for log in logs]
    progress = [log.message for log in core if " step " in log.message]
    assert any("step 1/2" in line for line in progress), progress
    assert all(line == line.strip() for line in progress), progress
    # the generated dataset leaves one image per city unannotated on purpose: counted at INFO,
    # never a warning
    assert not [log.message for log in logs if log.level >= 30], "warnings in a clean run"
    assert any("without fine annotations" in log.message for log in logs)
