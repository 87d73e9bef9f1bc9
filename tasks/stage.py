"""The flows' Prefect tasks: the stages of :mod:`segstyle_core.pipeline`'s graphs, through
:class:`PrefectRunner` (transient-only retries, device slots, Dask resources, a ``Cached`` state;
results stay in the stage cache, not Prefect's store), and the dataset flow's own two tasks."""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Completed, State

from segstyle.tasks.device_slots import SlotMode, dask_annotations, device_slot, slot_mode
from segstyle_core import cityscapes
from segstyle_core.config import DatasetSelection
from segstyle_core.devices import keep_freed_memory
from segstyle_core.errors import SegstyleError
from segstyle_core.outputs import publish_pictures
from segstyle_core.stagecache import Stage, StageRecord

R = TypeVar("R", bound=StageRecord)

keep_freed_memory()  # in a flow-run process or Dask worker started without GLIBC_TUNABLES

# PREFECT_LOGGING_EXTRA_LOGGERS leaves the level at the root's (warnings); progress is INFO.
logging.getLogger("segstyle_core").setLevel(logging.INFO)


def retry_transient(task: Any, task_run: Any, state: State) -> bool:
    """Retry on transient I/O errors only; never on bad input, weights or config errors."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, SegstyleError)


@functools.cache
def stage_task(stage: Stage[..., R]) -> Task[..., R]:
    """The Prefect task of ``stage``: its inputs, ``cache_dir`` and ``device_slots`` (the flow's
    slot mode: a Dask worker's environment does not know of the CLI's temporary server)."""

    def run(cache_dir: Path, device_slots: SlotMode, **inputs: Any) -> R | State[R]:
        slot = functools.partial(device_slot, mode=device_slots)
        record = stage.run_in(slot, cache_dir, **inputs)
        if record.cached:  # shown as Cached in the UI, like a hit of Prefect's own cache
            return Completed(data=record, name="Cached", message="verified result from the cache")
        return record

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("cache_dir", keyword, annotation=Path)]
    parameters += [inspect.Parameter("device_slots", keyword, annotation=SlotMode)]
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
    """A runner of :mod:`segstyle_core.pipeline` whose handles are the tasks' futures."""

    cache_dir: Path
    device_slots: SlotMode = field(default_factory=slot_mode)

    def __call__(self, stage: Stage[..., R], run_name: str, /, **inputs: Any) -> PrefectFuture[R]:
        """Submit ``stage`` as the task run ``run_name``."""
        named = stage_task(stage).with_options(task_run_name=lambda: run_name)
        with dask_annotations(stage.device(**inputs)):
            return named.submit(cache_dir=self.cache_dir, device_slots=self.device_slots, **inputs)


#: The dataset flow's own tasks: retried twice, their results not stored.
LIGHT_TASK: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 1, "persist_result": False}


@task(name="sample-city", task_run_name="sample-{dataset.split}-{dataset.city}", **LIGHT_TASK)
def sample_city(dataset: DatasetSelection) -> cityscapes.Sample:
    """Sample the selected cities; log their frames, the count of images without fine
    annotations, and a warning per malformed file."""
    sample = dataset.sample()
    logger = get_run_logger()
    noun, cities = "city" if len(sample.cities) == 1 else "cities", ", ".join(sample.cities)
    logger.info("%s %s: %d frames with fine annotations", noun, cities, len(sample.frames))
    if sample.unannotated:
        logger.info("left out %d images without fine annotations", len(sample.unannotated))
    for path, reason in sample.skipped:
        if path not in sample.unannotated:
            logger.warning("skipped %s: %s", path, reason)
    return sample


#: Copy an image's output pictures from the run's cache into the run directory.
publish = task(name="publish", task_run_name="publish-{image_id}", **LIGHT_TASK)(publish_pictures)
