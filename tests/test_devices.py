"""Out-of-memory errors become one clear ResourceError; other errors pass through."""

import os
import platform
import subprocess
import sys

import pytest

from segstyle_core.devices import KEEP_FREED_MEMORY_ENV, memory_guard
from segstyle_core.errors import ResourceError


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory"),
    ],
)
def test_out_of_memory_becomes_a_resource_error(error: Exception) -> None:
    with pytest.raises(ResourceError) as info, memory_guard("big.png: stylizing 9000x6000"):
        raise error
    message = str(info.value)
    assert message.startswith("big.png: stylizing 9000x6000: out of memory")
    assert "smaller working height" in message and "device cpu" in message and "\n" not in message
    assert info.value.__cause__ is error


def test_other_errors_pass_through() -> None:
    with pytest.raises(RuntimeError, match="shape mismatch"), memory_guard("x"):
        raise RuntimeError("shape mismatch")
    with pytest.raises(KeyError), memory_guard("x"):
        raise KeyError("k")


#: ``<applied, and GLIBC_TUNABLES set for children> <page faults of passes 3-5>`` of five
#: forward and backward passes through two 3×3 convolutions on 1×8×1024×1024 (32 MiB maps, as
#: a VGG19 feature map at 400×800 in bfloat16), in a new thread as a task runs, after
#: ``keep_freed_memory()``.
FAULTS = """
import ctypes, resource, threading
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, whatever the kernel's
import torch
import os
from segstyle_core.devices import GLIBC_TUNABLES, keep_freed_memory
applied = keep_freed_memory() and os.environ.get("GLIBC_TUNABLES") == GLIBC_TUNABLES
torch.set_num_threads(1)
conv = torch.nn.Conv2d(8, 8, 3, padding=1)
faults = []
def steps():
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        image = torch.rand(1, 8, 1024, 1024, requires_grad=True)
        torch.relu(conv(torch.relu(conv(image)))).sum().backward()
        del image
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=steps)
thread.start()
thread.join()
print(applied, *faults[2:])
"""


def _faults(keep: str) -> tuple[str, list[int]]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}  # mallopt's doing only
    env[KEEP_FREED_MEMORY_ENV] = keep
    applied, *faults = subprocess.run(
        [sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return applied, [int(n) for n in faults]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_feature_maps_are_reused_without_page_faults() -> None:
    """glibc returns every block over 32 MiB to the system when it is freed, so each pass
    page-faults its maps in again (about 800 MiB of 4 KiB pages here); kept, the heap is
    reused: of three later passes the median faults less than a tenth of one default pass
    (not every one: on a loaded machine one pass now and then grows the heap by a few maps)."""
    (system, system_faults), (kept, kept_faults) = _faults("0"), _faults("1")
    assert system == "False" and min(system_faults) > 50_000
    assert kept == "True" and sorted(kept_faults)[1] < min(system_faults) / 10


def test_convolutions_are_autotuned_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's per-shape algorithm search is switched on for CUDA models (buckets repeat crop
    shapes), never on the CPU (where the flag is unused and a CPU run leaves it as found)."""
    import torch

    from segstyle_core.devices import autotune_convolutions

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    autotune_convolutions(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    autotune_convolutions(torch.device("cuda", 0))
    assert torch.backends.cudnn.benchmark is True
