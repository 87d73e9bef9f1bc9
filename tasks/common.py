"""Device slots of heavy stages (a per-process limit)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
