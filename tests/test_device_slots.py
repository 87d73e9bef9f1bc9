"""Device slots across threads, processes and Dask workers (``segstyle.tasks.device_slots``).

Against a real ``prefect server start`` (the ``prefect_server`` fixture): the global
concurrency limit is created with one slot, a SIGKILLed holder's slot is free again within
seconds (not after its lease), and the tasks of a flow on two Dask worker processes never hold
the CPU's slot at the same time. Without an API the slot is a file lock of the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.prefect_service import REPO_ROOT

#: Takes ``device_slot(argv[1])``, says so on stdout, and keeps it until killed.
_HOLD = """
import sys, time
from segstyle.tasks.device_slots import device_slot
with device_slot(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture()
def slots_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private holder/lock directory and host name; the mode follows the API setting."""
    directory = tmp_path / "slots"
    monkeypatch.setenv("SEGSTYLE_DEVICE_SLOT_DIR", str(directory))
    monkeypatch.setenv("SEGSTYLE_DEVICE_SLOT_HOST", f"test-{os.getpid()}-{tmp_path.name}")
    monkeypatch.delenv("SEGSTYLE_DEVICE_SLOTS", raising=False)
    return directory


@pytest.fixture()
def on_server(prefect_server: Any, slots_env: Path) -> Iterator[Any]:
    """``PREFECT_API_URL`` is the test server's for the test (its logs and events are sent
    before the test ends: later, at exit, the server is gone and sending them stalls)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from segstyle.flows.server import _drain_to_api

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        try:
            yield prefect_server
        finally:
            _drain_to_api()


@pytest.fixture()
def no_api(slots_env: Path) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def _disjoint(intervals: list[tuple[float, float]]) -> bool:
    ordered = sorted(intervals)
    return all(later[0] >= earlier[1] for earlier, later in zip(ordered, ordered[1:], strict=False))


def _hold_in_subprocess(device: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, device],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    line = holder.stdout.readline() if holder.stdout else b""
    if line.strip() != b"held":
        holder.kill()
        raise AssertionError(holder.stderr.read().decode() if holder.stderr else "no output")
    return holder


# --- names, modes, Dask resources -------------------------------------------------------------


def test_slot_names_carry_device_and_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from segstyle.tasks.device_slots import slot_name

    monkeypatch.setenv("SEGSTYLE_DEVICE_SLOT_HOST", "GPU_Box.lab")
    assert slot_name("cpu") == "segstyle-device-cpu@gpu_box.lab"
    assert slot_name("cuda:1") == "segstyle-device-cuda-1@gpu_box.lab"
    assert slot_name("auto") in (
        "segstyle-device-cpu@gpu_box.lab",
        "segstyle-device-cuda-0@gpu_box.lab",
    )


def test_mode_follows_the_api_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from segstyle.tasks.device_slots import slot_mode

    monkeypatch.delenv("SEGSTYLE_DEVICE_SLOTS", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert slot_mode() == "host"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert slot_mode() == "prefect"
        monkeypatch.setenv("SEGSTYLE_DEVICE_SLOTS", "host")
        assert slot_mode() == "host"


def test_dask_resources_ask_for_a_gpu_only_for_cuda() -> None:
    from segstyle.tasks.device_slots import dask_resources

    assert dask_resources("cuda") == dask_resources("cuda:1") == {"GPU": 1}
    assert dask_resources("cpu") == dask_resources("auto") == {}


def test_server_module_sets_the_mode_variable_of_this_module() -> None:
    from segstyle.flows.server import DEVICE_SLOTS_ENV
    from segstyle.tasks.device_slots import MODE_ENV

    assert DEVICE_SLOTS_ENV == MODE_ENV


# --- without an API: a file lock of the machine ------------------------------------------------


@pytest.mark.usefixtures("no_api")
def test_without_api_threads_take_turns() -> None:
    from segstyle.tasks.device_slots import device_slot

    intervals: list[tuple[float, float]] = []

    def stage() -> None:
        with device_slot("cpu"):
            start = time.monotonic()
            time.sleep(0.1)
            intervals.append((start, time.monotonic()))

    threads = [threading.Thread(target=stage) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(intervals) == 4 and _disjoint(intervals)


@pytest.mark.usefixtures("no_api")
def test_without_api_a_killed_holders_slot_is_free_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from segstyle.tasks.device_slots import MODE_ENV, device_slot

    # no API on either side (an earlier test of this process may have set one)
    monkeypatch.setenv(MODE_ENV, "host")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    holder = _hold_in_subprocess("cpu", env)
    try:
        got = threading.Event()

        def take() -> None:
            with device_slot("cpu"):
                got.set()

        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not got.wait(0.5), "the slot was held by another process"
        holder.kill()
        assert got.wait(5)
    finally:
        holder.kill()
        holder.wait(timeout=10)


# --- on a Prefect server: a global concurrency limit --------------------------------------------


@pytest.mark.slow
def test_limit_is_created_with_one_slot_and_an_existing_one_kept(on_server: Any) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from segstyle.tasks.device_slots import device_slot, slot_name

    with device_slot("cpu"):
        with on_server.client() as client:
            limit = client.read_global_concurrency_limit_by_name(slot_name("cpu"))
        assert (limit.limit, limit.active_slots) == (1, 1)
    with on_server.client() as client:
        assert client.read_global_concurrency_limit_by_name(slot_name("cpu")).active_slots == 0
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=slot_name("cuda:7"), limit=2)
        )
    with device_slot("cuda:7"), device_slot("cuda:7"):  # two slots: both at once
        with on_server.client() as client:
            limit = client.read_global_concurrency_limit_by_name(slot_name("cuda:7"))
        assert (limit.limit, limit.active_slots) == (2, 2)


@pytest.mark.slow
def test_a_sigkilled_holders_slot_is_free_within_seconds(on_server: Any) -> None:
    """Its lease would hold the slot for a minute; the waiter finds the holder dead."""
    from segstyle.tasks.device_slots import LEASE_SECONDS, device_slot, slot_name

    holder = _hold_in_subprocess("cpu", on_server.env(**_slot_vars()))
    try:
        with on_server.client() as client:
            assert client.read_global_concurrency_limit_by_name(slot_name("cpu")).active_slots == 1
        holder.kill()
        holder.wait(timeout=10)
        start = time.monotonic()
        with device_slot("cpu"):
            waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait(timeout=10)
    print(f"slot of the killed holder taken after {waited:.2f} s")
    assert waited < min(10, LEASE_SECONDS / 2)
    with on_server.client() as client:
        assert client.read_global_concurrency_limit_by_name(slot_name("cpu")).active_slots == 0


@pytest.mark.slow
def test_a_held_slot_is_renewed(
    on_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.client.orchestration import SyncPrefectClient

    from segstyle.tasks import device_slots

    renewed: list[Any] = []
    renew = SyncPrefectClient.renew_concurrency_lease

    def counting(self: Any, lease_id: Any, lease_duration: float) -> Any:
        response = renew(self, lease_id, lease_duration)
        renewed.append(response.status_code)
        return response

    monkeypatch.setattr(SyncPrefectClient, "renew_concurrency_lease", counting)
    monkeypatch.setattr(device_slots, "RENEW_EVERY_SECONDS", 0.2)
    with device_slots.device_slot("cpu"):
        time.sleep(1.5)
    assert len(renewed) >= 3 and set(renewed) == {204}
    assert "not renewed" not in caplog.text


def _slot_vars() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("SEGSTYLE_DEVICE_SLOT")}


def _record_slot_interval(index: int, folder: str) -> None:
    """A heavy stage's stand-in: hold the CPU slot 0.3 s; write (start, end, pid)."""
    from segstyle.tasks.device_slots import device_slot

    with device_slot("cpu"):
        start = time.time()
        time.sleep(0.3)
        end = time.time()
    Path(folder, f"{index}.json").write_text(json.dumps([start, end, os.getpid()]))


@pytest.mark.slow
def test_dask_worker_processes_never_share_the_cpu_slot(on_server: Any, tmp_path: Path) -> None:
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from segstyle.tasks.device_slots import slot_name

    folder = tmp_path / "intervals"
    folder.mkdir()
    stage = task(_record_slot_interval, name="hold-cpu-slot")

    @flow(
        task_runner=DaskTaskRunner(
            cluster_kwargs={"n_workers": 2, "processes": True, "threads_per_worker": 1}
        )
    )
    def six_stages(folder: str) -> None:
        for future in [stage.submit(i, folder) for i in range(6)]:
            future.result()

    state = six_stages(str(folder), return_state=True)
    assert state.is_completed(), state
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    assert len(records) == 6
    assert len({pid for _, _, pid in records}) == 2  # both worker processes ran stages
    assert _disjoint([(start, end) for start, end, _ in records])
    with on_server.client() as client:
        limit = client.read_global_concurrency_limit_by_name(slot_name("cpu"))
    assert (limit.limit, limit.active_slots) == (1, 0)


def _gpu_left() -> float:
    from distributed import get_worker

    return float(get_worker().state.available_resources.get("GPU", -1))


@pytest.mark.slow
@pytest.mark.usefixtures("on_server")
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
