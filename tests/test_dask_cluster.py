"""A dataset run on a real Dask cluster, the way a user starts one across machines.

``dask scheduler`` and two ``dask worker`` processes (one thread each, each with its own local
folder, no nanny: a killed worker stays dead) on 127.0.0.1, started as separate processes;
``segstyle run --dask ADDRESS`` as a subprocess. The offline backends are deterministic, so the
cluster's rows must equal a local (threads) run's: the same IoU and the same ``mask_rle`` for
every prompt. Then ``kill -9`` of one worker while it holds the CPU's device slots (the CLI's
temporary server never frees a dead holder's Prefect lease, so the flow hands its workers host
slots): its tasks run again on the other, the run completes, and every image has its rows
exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from segstyle.tasks.device_slots import DIR_ENV
from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.errors import ConfigError
from tests.prefect_service import free_port, stop_process_group

BIN = Path(sys.executable).parent
RUN = ["--city", "zurich", "--classes", "car", "--prompts", "gt-instances"]
RUN += ["--segmenter", "grabcut", "--stylizer", "feedforward", "--feather", "2"]
#: The columns that say what a run computed (not when, where or how fast).
RESULT = ["image_id", "prompt_index", "instance_id", "status", "iou", "dice", "mask_rle"]


@dataclass
class Cluster:
    """A scheduler's address, its workers' processes and the folder of their host slots."""

    address: str
    workers: list[subprocess.Popen[bytes]]
    slots: Path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 annotated 256×128 frames of zurich."""
    root = tmp_path_factory.mktemp("dask") / "data"
    return generate_demo_dataset(root, size=(256, 128), frames_per_city=6, cities=("zurich",))


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    slots = tmp_path / "device-slots"

    def start(name: str, *argv: str) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                [str(BIN / "dask"), *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, DIR_ENV: str(slots)},
            )

    scheduler = start(
        "scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"
    )
    workers = [
        start(f"worker-{k}", "worker", address, "--nthreads", "1", "--no-nanny",
              "--no-dashboard", "--local-directory", str(tmp_path / f"worker-{k}"))
        for k in range(2)
    ]  # fmt: skip
    try:
        _wait_for_workers(address, 2)
        yield Cluster(address, workers, slots)
    finally:
        for process in [*workers, scheduler]:
            stop_process_group(process, grace_s=5)


def _wait_for_workers(address: str, count: int, timeout_s: float = 90) -> None:
    from distributed import Client

    with Client(address, timeout=timeout_s) as client:
        client.wait_for_workers(count, timeout=timeout_s)


def _segstyle(dataset: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return subprocess.Popen(
        [str(BIN / "segstyle"), "run", "--dataset", str(dataset), *RUN, "--out", str(out),
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _rows(process: subprocess.Popen[str], timeout_s: float = 600) -> pd.DataFrame:
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process_group(process, grace_s=5)
        stdout, stderr = process.communicate()
        pytest.fail(f"the run did not end within {timeout_s} s: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    rows = pd.read_parquet(stdout.strip().splitlines()[-1])
    return rows.sort_values(["image_id", "prompt_index"]).reset_index(drop=True)


def _holds_a_lock_in(folder: Path, pid: int) -> bool:
    """Whether process ``pid`` holds a ``flock`` on a file of ``folder`` (``/proc/locks``)."""
    inodes = {path.stat().st_ino for path in folder.glob("*.lock")}
    for line in Path("/proc/locks").read_text().splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF"; a waiter's has "->" after "1:"
        fields = line.split()
        if fields[1] == "FLOCK" and int(fields[4]) == pid:
            if int(fields[5].rsplit(":", 1)[1]) in inodes:
                return True
    return False


@pytest.mark.slow
def test_cluster_rows_equal_a_local_runs(dataset: Path, cluster: Cluster, tmp_path: Path) -> None:
    local = _rows(_segstyle(dataset, tmp_path / "local"))
    remote = _rows(_segstyle(dataset, tmp_path / "cluster", "--dask", cluster.address))
    assert len(local) >= 6 and set(local["status"]) == {"ok"}
    pd.testing.assert_frame_equal(local[RESULT], remote[RESULT])


@pytest.mark.slow
def test_a_killed_worker_loses_no_image_and_duplicates_none(
    dataset: Path, cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = _segstyle(dataset, out, "--dask", cluster.address)
    deadline = time.monotonic() + 300
    while not _holds_a_lock_in(cluster.slots, cluster.workers[0].pid):  # segmenting, painting
        ended = "the run ended before worker 0 took a device slot"
        assert run.poll() is None, f"{ended}: {run.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "worker 0 took no device slot within 300 s"
        time.sleep(0.02)
    os.kill(cluster.workers[0].pid, signal.SIGKILL)
    rows = _rows(run)
    assert cluster.workers[0].wait(timeout=10) == -signal.SIGKILL
    annotated = {p.name.split("_gtFine_")[0] for p in dataset.rglob("*_gtFine_labelIds.png")}
    assert set(rows["status"]) == {"ok"}
    assert not rows.duplicated(["image_id", "prompt_index"]).any()
    assert set(rows["image_id"]) == annotated and len(annotated) == 6
    assert len(pd.read_parquet(out / "metrics")) == len(rows)  # the run's file, nothing twice


def test_the_task_runner_follows_the_cli_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--dask`` wins, then ``--workers`` (a local cluster whose workers offer the GPU that
    CUDA stages ask for), then ``$SEGSTYLE_DASK_ADDRESS`` (a deployment's job variable);
    without any, threads."""
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from segstyle.flows.cluster import DASK_ADDRESS_ENV, task_runner

    monkeypatch.delenv(DASK_ADDRESS_ENV, raising=False)
    assert isinstance(task_runner(), ThreadPoolTaskRunner)
    local = task_runner(workers=3)
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 3
    assert "resources" not in local.cluster_kwargs
    gpu = task_runner(workers=2, devices=["cpu", "cuda:0"])
    assert gpu.cluster_kwargs["resources"] == {"GPU": 1}  # type: ignore[attr-defined]
    monkeypatch.setenv(DASK_ADDRESS_ENV, "tcp://10.0.0.1:8786")
    assert task_runner().address == "tcp://10.0.0.1:8786"  # type: ignore[attr-defined]
    assert task_runner("tcp://10.0.0.2:8786").address == "tcp://10.0.0.2:8786"  # type: ignore[attr-defined]
    asked = task_runner(workers=2)  # the flag a user typed beats the machine's variable
    assert asked.address is None and asked.cluster_kwargs["n_workers"] == 2  # type: ignore[attr-defined]


def test_only_a_scheduler_by_address_computes_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """The preflight checks the devices on this machine for threads and a local cluster only."""
    from segstyle.flows.cluster import DASK_ADDRESS_ENV, computes_here, task_runner

    monkeypatch.delenv(DASK_ADDRESS_ENV, raising=False)
    assert computes_here(task_runner()) and computes_here(task_runner(workers=2))
    assert not computes_here(task_runner("tcp://10.0.0.2:8786"))
    assert computes_here(task_runner().duplicate())  # what a flow run holds
    assert not computes_here(task_runner("tcp://10.0.0.2:8786").duplicate())


def test_a_cuda_run_needs_a_worker_offering_a_gpu_once_the_cluster_has_workers() -> None:
    """Against real in-process schedulers on 127.0.0.1: no worker yet (Dask waits for one: a
    warning line), a worker offering ``GPU=1``, one offering nothing."""
    from distributed import LocalCluster

    from segstyle.flows.cluster import check_scheduler

    def cluster(workers: int, **resources: float) -> LocalCluster:
        return LocalCluster(
            n_workers=workers, processes=False, protocol="tcp://", host="127.0.0.1",
            dashboard_address=None, resources=resources or None,
        )  # fmt: skip

    with cluster(0) as empty:  # the run goes ahead, waiting for a worker: the CLI says so
        address = empty.scheduler_address
        assert check_scheduler(address, "--dask", {"GPU": 1}) == (
            f"--dask {address}: the scheduler has no workers yet; the run waits until one joins "
            f"(`dask worker {address} --resources GPU=1`)"
        )
        warning = check_scheduler(address, "--dask", {})
        assert warning is not None and warning.endswith(f"(`dask worker {address}`)")
    with cluster(1, GPU=1.0) as ready:
        assert check_scheduler(ready.scheduler_address, "--dask", {"GPU": 1}) is None
    with cluster(1) as cpu_only:
        assert check_scheduler(cpu_only.scheduler_address, "--dask", {}) is None  # CPU run
        with pytest.raises(ConfigError, match="none of its 1 workers offers GPU=1"):
            check_scheduler(cpu_only.scheduler_address, "--dask", {"GPU": 1})


@pytest.mark.slow
def test_a_cuda_run_is_refused_by_a_cluster_without_gpu_workers(
    dataset: Path, cluster: Cluster, tmp_path: Path
) -> None:
    """Dask would hold its stages until a worker with ``GPU=1`` joins; the check says so first
    (and lets a CPU run through, which the other tests run)."""
    from segstyle.flows.cluster import check_scheduler

    check_scheduler(cluster.address, "--dask", {})
    with pytest.raises(ConfigError, match="none of its 2 workers offers GPU=1") as refused:
        check_scheduler(cluster.address, "--dask", {"GPU": 1})
    assert f"`dask worker {cluster.address} --resources GPU=1`" in str(refused.value)
    process = _segstyle(dataset, tmp_path / "out", "--dask", cluster.address, "--device", "cuda")
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        stop_process_group(process, grace_s=5)
    assert process.returncode == 2 and not (tmp_path / "out" / "metrics").exists()
    assert stderr.startswith(f"segstyle: error: --dask {cluster.address}: none of its 2 workers")
