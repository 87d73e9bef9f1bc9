"""Compute devices, the C allocator's settings and the process-wide model registry."""

from __future__ import annotations

import contextlib
import ctypes
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
    """``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a usable device
    (CUDA with its index); :class:`ConfigError` otherwise."""
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
    """Threads one stage computes with (torch, OpenCV, ONNX Runtime): ``OMP_NUM_THREADS`` where
    set (Dask sets 1 per worker process), else the CPUs this process may use."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else len(os.sched_getaffinity(0))


#: The free heap kept (the largest threshold).
KEPT_FREE_BYTES = 2**31 - 1
#: ``{glibc tunable: (its mallopt parameter in malloc.h, value)}``: no mmap, heap kept, one arena.
_MALLOPT = {"mmap_max": (-4, 0), "trim_threshold": (-1, KEPT_FREE_BYTES), "arena_max": (-8, 1)}
#: The same settings as glibc tunables, read at process start (children, ``dask worker``, the
#: deployments' runs in ``prefect.yaml``).
GLIBC_TUNABLES = ":".join(f"glibc.malloc.{name}={value}" for name, (_, value) in _MALLOPT.items())
#: ``0`` leaves the C allocator as it is (:func:`keep_freed_memory`).
KEEP_FREED_MEMORY_ENV = "SEGSTYLE_KEEP_FREED_MEMORY"


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` keep freed memory (:data:`GLIBC_TUNABLES`, also set for child
    processes) instead of page-faulting each VGG19 feature map in again; whether it did (not on
    other C libraries, nor with ``SEGSTYLE_KEEP_FREED_MEMORY=0``). Call it before any thread."""
    off = os.environ.get(KEEP_FREED_MEMORY_ENV, "1").strip() == "0"
    if off or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no glibc, no mallopt
        return False
    os.environ.setdefault("GLIBC_TUNABLES", GLIBC_TUNABLES)
    return all([mallopt(option, value) == 1 for option, value in _MALLOPT.values()])  # all applied


@functools.cache
def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (CUDA 8.0+, AVX512-BF16 or AMX)."""
    import torch

    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autotune_convolutions(device: torch.device) -> None:
    """On CUDA, have cuDNN time its convolution algorithms once per input shape and keep the
    fastest (``torch.backends.cudnn.benchmark``, process-wide): the ROI crop buckets and SAM's
    fixed image size repeat shapes. Speed, not settings: the algorithm chosen may differ from
    process to process, and with it the last bits of a CUDA result; nothing on other devices."""
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


class ModelCache:
    """A thread-safe registry where each key's factory runs at most once (keys load in parallel;
    an exception stores nothing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._items: dict[Hashable, Any] = {}

    def get_or_create(self, key: Hashable, factory: Callable[[], T]) -> T:
        """The object under ``key``, made by ``factory()`` if absent."""
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._items:
                self._items[key] = factory()
            return self._items[key]

    def clear(self) -> None:
        """Drop every stored object."""
        with self._lock:
            self._items.clear()
            self._key_locks.clear()


#: The one registry every backend shares.
MODELS = ModelCache()


_OOM_TEXTS = ("out of memory", "failed to allocate", "bad allocation", "cannot allocate")


@contextlib.contextmanager
def memory_guard(what: str) -> Iterator[None]:
    """Turn running out of memory in the block (``MemoryError``, CUDA's, torch's or onnxruntime's)
    into a :class:`ResourceError` starting with ``what``; other errors pass through."""
    try:
        yield
    except Exception as exc:
        torch = sys.modules.get("torch")  # loaded only by the model backends that use it
        cuda_oom = torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)
        message = str(exc).lower() if isinstance(exc, RuntimeError) else ""
        if not (isinstance(exc, MemoryError) or cuda_oom or any(m in message for m in _OOM_TEXTS)):
            raise
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ResourceError(
            f"{what}: out of memory; use a smaller working height, fewer prompts per image, or "
            "the device cpu"
        ) from exc
