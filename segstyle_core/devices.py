"""Compute devices and the process-wide model registry.

Models are loaded once per process and reused across images: every backend asks
:data:`MODELS` for its model under a key such as ``("sam", "vit_l", "cuda:0", weights_sha256)``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from segstyle_core.errors import ConfigError, ResourceError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a usable :class:`torch.device`.

    torch is imported here, not with this module: the offline backends never load it.

    ``"auto"`` picks CUDA when present, else the CPU. A CUDA device always comes back with its
    index (``cuda`` -> ``cuda:<current>``) so that equal devices give equal registry keys.

    Raises:
        ConfigError: unknown device string, or CUDA requested on a machine without it.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ConfigError(f"unsupported device {device!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but CUDA is not available: use the device cpu"
        )
    index = torch.cuda.current_device() if resolved.index is None else resolved.index
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices): "
            "use the device cuda:0 or auto"
        )
    return torch.device("cuda", index)


def compute_threads() -> int:
    """Threads one stage computes with, in torch, OpenCV and ONNX Runtime alike:
    ``OMP_NUM_THREADS`` where it is set (Dask sets it to 1 in each worker process it starts),
    else the CPUs this process may use."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else len(os.sched_getaffinity(0))


#: glibc's ``mallopt`` parameters (``malloc.h``) and the free memory its heap keeps (the
#: largest value ``M_TRIM_THRESHOLD`` takes, about 2 GiB).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
KEPT_FREE_BYTES = 2**31 - 1
#: The same settings as glibc tunables, read when a process starts: for the processes this one
#: starts, and for ``dask worker`` and the deployments' runs (``prefect.yaml``).
GLIBC_TUNABLES = (
    f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={KEPT_FREE_BYTES}:"
    "glibc.malloc.arena_max=1"
)
#: ``0`` leaves the C allocator as it is (:func:`keep_freed_memory`).
KEEP_FREED_MEMORY_ENV = "SEGSTYLE_KEEP_FREED_MEMORY"


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` keep freed memory for reuse: no ``mmap`` per large block, one
    arena for every thread, up to :data:`KEPT_FREE_BYTES` of free heap kept; and
    ``GLIBC_TUNABLES`` (unless set) for the processes this one starts. Whether it did (not on
    other C libraries, nor with ``SEGSTYLE_KEEP_FREED_MEMORY=0``).

    By default every block over 32 MiB (a VGG19 feature map at 400×800) is its own ``mmap``,
    returned to the system when freed, so every Gatys evaluation page-faults its feature maps
    in again: one bfloat16 evaluation at 400×800 took 1.5× as long (``benchmarks/README.md``).
    The cost: a process keeps its peak heap until it ends. A thread that already has its own
    arena keeps it, and glibc still maps blocks over 64 MiB apart there, so call it before the
    process starts threads (or start the process with :data:`GLIBC_TUNABLES`).
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1").strip() == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no glibc, no mallopt
        return False
    os.environ.setdefault("GLIBC_TUNABLES", GLIBC_TUNABLES)
    options = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, KEPT_FREE_BYTES), (_M_ARENA_MAX, 1))
    applied = [mallopt(option, value) == 1 for option, value in options]
    return all(applied)


@functools.cache
def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU with native bfloat16
    (compute capability 8.0+), or a CPU with AVX512-BF16 or AMX (oneDNN uses them).

    The rule of every ``"auto"`` precision setting (Gatys' autocast, SAM's encoder)."""
    import torch

    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


class ModelCache:
    """A thread-safe process-wide registry: each key's factory runs at most once.

    Two threads asking for the same key wait for one load; different keys load in parallel.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._items: dict[Hashable, Any] = {}

    def get_or_create(self, key: Hashable, factory: Callable[[], T]) -> T:
        """Return the object stored under ``key``, calling ``factory()`` to create it if absent.

        Args:
            key: hashable identity, e.g. ``(backend, variant, str(device), weights_sha256)``.
            factory: builds the object; an exception propagates and nothing is stored.
        """
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = factory()
            with self._lock:
                self._items[key] = value
            return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def clear(self) -> None:
        """Drop every stored object (frees their memory once no caller holds them)."""
        with self._lock:
            self._items.clear()
            self._key_locks.clear()


MODELS = ModelCache()
"""The one registry every backend shares."""


_OOM_MARKERS = ("out of memory", "failed to allocate", "bad allocation", "cannot allocate")


@contextlib.contextmanager
def memory_guard(what: str) -> Iterator[None]:
    """Turn running out of memory inside the block into one clear :class:`ResourceError`.

    ``what`` names the input and the work (``"img.png: stylizing 2048x1024"``). Covers Python's
    ``MemoryError``, CUDA's ``OutOfMemoryError`` and allocation failures that torch or
    onnxruntime report as ``RuntimeError``; other errors pass through unchanged.
    """
    try:
        yield
    except Exception as exc:
        torch = sys.modules.get("torch")  # loaded only by the model backends that use it
        cuda_oom = torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)
        oom = (
            isinstance(exc, MemoryError)
            or cuda_oom
            or (isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS))
        )
        if not oom:
            raise
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ResourceError(
            f"{what}: out of memory; use a smaller working height, fewer prompts per image, or "
            "the device cpu"
        ) from exc
