"""The flows' runner of the stage graphs (:mod:`segstyle_core.pipeline`): each stage a Prefect task.

The stage owns the cache key, the verified on-disk result, the timing and the record; its task
adds what Prefect gives: a task-run name, transient-only retries, the device slot of heavy
stages (and their Dask resources), and the ``Cached`` state for a result that came from the
cache. Prefect's own result store is not used (``persist_result=False``, no cache policy):
everything a run caches lives under its output folder, as JSON records, and a retried flow run
finds it there. The core's log lines reach the run's logs through Prefect's
``PREFECT_LOGGING_EXTRA_LOGGERS=segstyle_core``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Completed, State

from segstyle.tasks.device_slots import dask_annotations, device_slot
from segstyle_core.errors import SegstyleError
from segstyle_core.stagecache import Stage, StageRecord

R = TypeVar("R", bound=StageRecord)

# Prefect hands the core's loggers its run-log handler but leaves their level at the root's
# (warnings): the stages' progress lines are INFO.
logging.getLogger("segstyle_core").setLevel(logging.INFO)


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


@functools.cache
def stage_task(stage: Stage[..., R]) -> Task[..., R]:
    """The Prefect task of ``stage``: its inputs as keyword parameters, and ``cache_dir``."""

    def run(cache_dir: Path, **inputs: Any) -> R | State[R]:
        record = stage.run_in(device_slot, cache_dir, **inputs)
        if record.cached:  # shown as Cached in the UI, like a hit of Prefect's own cache
            return Completed(data=record, name="Cached", message="verified result from the cache")
        return record

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("cache_dir", keyword, annotation=Path)]
    parameters += [p.replace(kind=keyword) for p in stage.signature.parameters.values()]
    run.__signature__ = stage.signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__name__ = run.__qualname__ = stage.compute.__name__
    run.__doc__ = stage.compute.__doc__
    decorate = task(
        name=stage.name,
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=2,
        retry_delay_seconds=[1, 4],
        retry_condition_fn=retry_transient,
    )
    return decorate(run)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PrefectRunner:
    """A runner of :mod:`segstyle_core.pipeline` that submits each stage as a Prefect task of
    the current flow run, with its results in ``cache_dir``; its handles are the tasks'
    futures (an input future makes the task wait for it)."""

    cache_dir: Path

    def __call__(self, stage: Stage[..., R], run_name: str, /, **inputs: Any) -> PrefectFuture[R]:
        """Submit ``stage`` as the task run ``run_name`` (a heavy stage with its device's Dask
        resources)."""
        named = stage_task(stage).with_options(task_run_name=lambda: run_name)
        device = stage.device(**inputs)
        with dask_annotations(device) if device is not None else contextlib.nullcontext():
            return named.submit(cache_dir=self.cache_dir, **inputs)
