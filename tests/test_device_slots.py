"""Device slots (``segstyle.tasks.device_slots``) in both modes, across threads and processes.

Host mode: ``flock``s of the machine; two processes computing on every core take turns, one-thread
ones share the CPU up to its cores, and a SIGKILLed holder's slot is free at once. Prefect mode,
on the session's test API (``prefect_api``): a global concurrency limit of the device's size,
held across processes and Dask worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segstyle.tasks.device_slots import (
    DIR_ENV,
    HOST_ENV,
    LEASE_SECONDS,
    MODE_ENV,
    dask_resources,
    device_slot,
    slot_mode,
    slot_name,
    slot_size,
)
from tests.prefect_service import REPO_ROOT

#: Takes ``device_slot(argv[1])``, says so, and keeps it until a line arrives on stdin.
_HOLD = """
import sys
from segstyle.tasks.device_slots import device_slot
with device_slot(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture()
def slot_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private lock folder and machine name: this test's slots are its own."""
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "slots"))
    monkeypatch.setenv(HOST_ENV, f"test-{os.getpid()}-{tmp_path.name}")


@pytest.fixture(params=["host", "prefect"])
def mode(request: pytest.FixtureRequest, slot_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each mode in turn: ``host`` forced; ``prefect`` on the session's test API."""
    if request.param == "host":
        monkeypatch.setenv(MODE_ENV, "host")
    else:
        request.getfixturevalue("prefect_api")
        monkeypatch.delenv(MODE_ENV, raising=False)
    assert slot_mode() == request.param
    return str(request.param)


@pytest.fixture()
def prefect_client(prefect_api: None, slot_env: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    from prefect.client.orchestration import get_client

    monkeypatch.delenv(MODE_ENV, raising=False)
    with get_client(sync_client=True) as client:
        yield client


def _subprocess_env() -> dict[str, str]:
    """This process's slot settings, and its API URL if it has one (the test API is a setting,
    not an environment variable)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    if slot_mode() == "prefect":
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return env


@pytest.fixture()
def holder() -> Iterator[Any]:
    """``holder(device)`` starts a process holding ``device``'s slot; each is killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(device: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", _HOLD, device],
            cwd=REPO_ROOT,
            env=_subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "held\n", (
            process.stderr.read() if process.stderr else ""
        )
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def _waiter(device: str) -> threading.Event:
    """An event set once a thread of this process has taken (and left) ``device``'s slot."""
    taken = threading.Event()

    def take() -> None:
        with device_slot(device):
            taken.set()

    threading.Thread(target=take, daemon=True).start()
    return taken


def _holding_intervals(devices: list[str], seconds: float) -> list[tuple[float, float]]:
    """One thread per entry of ``devices`` holds its slot ``seconds``; their (start, end)."""
    intervals: list[tuple[float, float]] = []

    def hold(device: str) -> None:
        with device_slot(device):
            start = time.monotonic()
            time.sleep(seconds)
            intervals.append((start, time.monotonic()))

    threads = [threading.Thread(target=hold, args=(device,)) for device in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(intervals) == len(devices)
    return intervals


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start
        running += change
        most = max(most, running)
    return most


# --- names, modes, Dask resources -------------------------------------------------------------


def test_slot_names_carry_device_and_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOST_ENV, "GPU_Box.lab")
    assert slot_name("cpu") == "segstyle-device-cpu@gpu_box.lab"
    assert slot_name("cuda:1") == "segstyle-device-cuda-1@gpu_box.lab"
    assert slot_name("auto") in (
        "segstyle-device-cpu@gpu_box.lab",
        "segstyle-device-cuda-0@gpu_box.lab",
    )


def test_mode_follows_the_api_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv(MODE_ENV, raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert slot_mode() == "host"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert slot_mode() == "prefect"
        monkeypatch.setenv(MODE_ENV, "host")
        assert slot_mode() == "host"


def test_dask_resources_ask_for_a_gpu_only_for_cuda() -> None:
    assert dask_resources("cuda") == dask_resources("cuda:1") == {"GPU": 1}
    assert dask_resources("cpu") == dask_resources("auto") == {}


# --- both modes ----------------------------------------------------------------------------------


def test_threads_on_one_device_take_turns(mode: str) -> None:
    assert _most_at_once(_holding_intervals(["cpu"] * 3, 0.2)) == 1


def test_one_thread_holders_share_the_cpu_up_to_its_cores(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cores = os.cpu_count() or 1
    assert slot_size("cpu") == (cores, 1)
    assert _most_at_once(_holding_intervals(["cpu"] * (cores + 1), 0.5)) == cores


def test_another_device_is_free_while_one_is_held(mode: str) -> None:
    with device_slot("cpu"):
        assert _waiter("cuda:1").wait(30)
        same_device = _waiter("cpu")
        assert not same_device.wait(1.0), "two holders of one device at once"
    assert same_device.wait(45)


def test_a_process_holding_the_slot_makes_another_wait(mode: str, holder: Any) -> None:
    process = holder("cpu")
    other_device = _waiter("cuda:1")
    same_device = _waiter("cpu")
    assert other_device.wait(30)
    assert not same_device.wait(1.0), "took the slot another process holds"
    assert process.stdin is not None
    process.stdin.write("release\n")
    process.stdin.flush()
    assert process.wait(timeout=30) == 0
    assert same_device.wait(45)  # Prefect mode: a waiter retries when the server says (Retry-After)


# --- host mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["host"], indirect=True)
def test_host_a_sigkilled_holders_slot_is_free_at_once(mode: str, holder: Any) -> None:
    process = holder("cpu")
    taken = _waiter("cpu")
    assert not taken.wait(0.5)
    process.send_signal(signal.SIGKILL)
    assert taken.wait(5)


# --- Prefect mode -------------------------------------------------------------------------------


def test_prefect_limit_is_created_with_its_size_and_an_existing_one_kept(
    prefect_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    def limit(device: str) -> tuple[int, int]:
        found = prefect_client.read_global_concurrency_limit_by_name(slot_name(device))
        return found.limit, found.active_slots

    cores = os.cpu_count() or 1
    with device_slot("cpu"):  # this process computes on every core: it takes them all
        assert limit("cpu") == (cores, cores)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with device_slot("cpu"):
        assert limit("cpu") == (cores, 1)
    assert limit("cpu") == (cores, 0)
    prefect_client.create_global_concurrency_limit(
        GlobalConcurrencyLimitCreate(name=slot_name("cuda:7"), limit=2)
    )
    with device_slot("cuda:7"), device_slot("cuda:7"):  # two slots: both at once
        assert limit("cuda:7") == (2, 2)
    assert limit("cuda:7") == (2, 0)


@pytest.mark.slow
def test_prefect_a_sigkilled_holders_slot_is_free_once_its_lease_ends(
    prefect_server: Any, slot_env: None, holder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ``prefect server start`` (services running): within the lease and one repossessor
    pass (15 s), as the module's docstring says."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv(MODE_ENV, raising=False)
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        process = holder("cpu")
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        with prefect_server.client() as client:
            while client.read_global_concurrency_limit_by_name(slot_name("cpu")).active_slots:
                assert time.monotonic() - killed < LEASE_SECONDS + 15 + 10, "slot still taken"
                time.sleep(1)
        print(f"slot of the killed holder free after {time.monotonic() - killed:.0f} s")
        with device_slot("cpu"):
            pass


def _record_slot_interval(index: int, folder: str) -> None:
    """A heavy stage's stand-in: hold the CPU slot 0.3 s; write [start, end, pid]."""
    with device_slot("cpu"):
        start = time.time()
        time.sleep(0.3)
        end = time.time()
    Path(folder, f"{index}.json").write_text(json.dumps([start, end, os.getpid()]))


@pytest.mark.slow
def test_prefect_one_thread_dask_workers_hold_cpu_slots_up_to_the_limit(
    prefect_client: Any, tmp_path: Path
) -> None:
    """Dask starts its worker processes with ``OMP_NUM_THREADS=1``: each stage takes one CPU
    slot, so two workers take turns under a limit of 1 and every slot is returned."""
    from prefect import flow, task
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect_dask import DaskTaskRunner

    stage = task(_record_slot_interval, name="hold-cpu-slot")

    @flow(
        task_runner=DaskTaskRunner(
            cluster_kwargs={"n_workers": 2, "processes": True, "threads_per_worker": 1}
        )
    )
    def six_stages(folder: str) -> None:
        for future in [stage.submit(i, folder) for i in range(6)]:
            future.result()

    name = slot_name("cpu")
    prefect_client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    for slots in (1, 2):
        prefect_client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=slots)
        )
        folder = tmp_path / str(slots)
        folder.mkdir()
        state = six_stages(str(folder), return_state=True)
        assert state.is_completed(), state
        records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        assert len(records) == 6
        assert len({pid for _, _, pid in records}) == 2  # both worker processes ran stages
        # at most the limit at once (whether two overlap depends on Dask's timing)
        assert _most_at_once([(start, end) for start, end, _ in records]) <= slots
        limit = prefect_client.read_global_concurrency_limit_by_name(name)
        assert (limit.limit, limit.active_slots) == (slots, 0)


def _gpu_left() -> float:
    from distributed import get_worker

    return float(get_worker().state.available_resources.get("GPU", -1))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_dask_annotation_takes_the_workers_gpu_for_cuda_stages() -> None:
    """Under the annotation a CUDA stage holds the worker's GPU resource; a CPU stage not."""
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from segstyle.tasks.device_slots import dask_annotations

    gpu_left = task(_gpu_left, name="gpu-left")

    @flow(
        task_runner=DaskTaskRunner(
            cluster_kwargs={"n_workers": 1, "processes": False, "resources": {"GPU": 1}}
        )
    )
    def annotated() -> tuple[float, float]:
        with dask_annotations("cuda:0"):
            on_gpu = gpu_left.submit().result()
        with dask_annotations("cpu"):
            on_cpu = gpu_left.submit().result()
        return on_gpu, on_cpu

    assert annotated() == (0.0, 1.0)
