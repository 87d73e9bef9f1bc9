"""What every stage task shares: retry rules, device slots and timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.states import State

from segstyle_core.errors import SegstyleError


def retry_transient(task: Any, task_run: Any, state: State) -> bool:
    """Retry on transient I/O errors only; never on bad input, weights or config errors."""
    try:
        state.result(raise_on_failure=True)
    except SegstyleError:
        return False
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is a bug or bad data: do not retry
        return False
    return False


#: Options of every stage task: persisted results (for the cache), transient-only retries.
STAGE_OPTIONS: dict[str, Any] = {
    "persist_result": True,
    "retries": 2,
    "retry_delay_seconds": [1, 4],
    "retry_condition_fn": retry_transient,
}

_slot_lock = threading.Lock()
_slots: dict[str, threading.BoundedSemaphore] = {}


#: Heavy model stages that may run at once per device. On the CPU one model stage already uses
#: every core (torch's intra-op threads); on a GPU one at a time keeps memory predictable.
#: Light stages (I/O, metrics) take no slot.
SLOTS_PER_DEVICE = 1


@contextmanager
def device_slot(device: str) -> Iterator[None]:
    """Hold the device's slot while a heavy model stage runs (a per-process concurrency limit)."""
    with _slot_lock:
        slot = _slots.setdefault(device, threading.BoundedSemaphore(SLOTS_PER_DEVICE))
    with slot:
        yield


@contextmanager
def timed(record: dict[str, Any], key: str = "seconds") -> Iterator[None]:
    """Store the wall time of the ``with`` block in ``record[key]``."""
    start = time.perf_counter()
    yield
    record[key] = time.perf_counter() - start
