"""The one shape of every stage task: a Prefect task over a core :class:`Stage`.

The stage owns the cache key, the verified on-disk result, the timing and the record; the
task adds what Prefect gives: a task-run name, transient-only retries, the device slot of
heavy stages, the core's log lines in the run's logs, and the ``Cached`` state for a result
that came from the cache. Prefect's own result store is not
used (``persist_result=False``, no cache policy): everything a run caches lives under its
output folder, as JSON records, and a retried flow run finds it there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State
from prefect.tasks import TaskRunNameCallbackWithParameters

from segstyle.tasks.device_slots import device_slot
from segstyle_core.errors import SegstyleError
from segstyle_core.stagecache import Stage, StageRecord

P = ParamSpec("P")
R = TypeVar("R", bound=StageRecord)


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


def _forward_core_logs() -> None:
    """Send the core's log lines (``segstyle_core.*``) to the Prefect run's logs too."""
    core = logging.getLogger("segstyle_core")
    core.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in core.handlers:
            core.addHandler(handler)


_forward_core_logs()


def stage_task(stage: Stage[P, R], run_name: str | Callable[[dict[str, Any]], str]) -> Task[..., R]:
    """The Prefect task of ``stage``, named ``run_name``: a format string over its parameters,
    or a function of them (``run_name(parameters=...)``).

    Typed ``Task[..., R]``: its arguments may be the stage's own or futures of them.
    """

    def run(*args: P.args, **kwargs: P.kwargs) -> R | State[R]:
        record = stage.run_in(device_slot, *args, **kwargs)
        if record.cached:  # shown as Cached in the UI, like a hit of Prefect's own cache
            return Completed(data=record, name="Cached", message="verified result from the cache")
        return record

    run.__signature__ = stage.signature  # type: ignore[attr-defined]
    run.__name__ = run.__qualname__ = stage.compute.__name__
    run.__doc__ = stage.compute.__doc__
    decorate = task(
        name=stage.name,
        # Prefect calls a function with a ``parameters`` argument with the task's parameters;
        # its type (a Protocol with a classmethod) admits no plain function, hence the cast
        task_run_name=cast("str | TaskRunNameCallbackWithParameters", run_name),
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=2,
        retry_delay_seconds=[1, 4],
        retry_condition_fn=retry_transient,
    )
    return decorate(run)  # type: ignore[arg-type]
