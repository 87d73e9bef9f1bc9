"""What every segstyle flow gets (:func:`segstyle_flow`): a readable run name, a time limit, no
stored result, a new run after a crash, short state messages, and expected failures logged on one
line without a traceback (:class:`QuietExpectedFailures`)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run
from prefect.states import Scheduled, State

from segstyle_core.errors import SegstyleError, error_line, one_line
from segstyle_core.fileio import file_name_part

#: Time limits: a nightly dataset run ends before the next night's is due.
DATASET_TIMEOUT_S = 23 * 3600
PHOTO_TIMEOUT_S = 2 * 3600
VIDEO_TIMEOUT_S = 12 * 3600
#: How many times in a row a crashed deployment run is started again; then it stays Crashed.
CRASH_RETRIES = 2
CRASH_RETRY_TAG = "crash-retry-"
CRASH_RETRY_DELAY_S = 10
#: The longest state message: the width of the UI's state column.
STATE_MESSAGE_CHARS = 200


def retry_crashed(flow: Any, flow_run: FlowRun, state: State[Any]) -> None:
    """``on_crashed`` hook: start a deployment's crashed run again as a new run tagged
    ``crash-retry-<n>`` (a rescheduling would be undone by the worker's crash report), at most
    :data:`CRASH_RETRIES` times in a row; the idempotency key makes the hook's two calls one."""
    if flow_run.deployment_id is None:
        return
    logger = flow_run_logger(flow_run)
    numbers = [t.removeprefix(CRASH_RETRY_TAG) for t in flow_run.tags or ()]
    retries = max((int(n) for n in numbers if n.isdigit()), default=0)  # crash-retry-<n>
    if retries >= CRASH_RETRIES:
        logger.error("crashed after %d crash retries: not retried again", retries)
        return
    retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=CRASH_RETRY_DELAY_S)
    message = one_line(f"crash retry {retries + 1} of {flow_run.name}", STATE_MESSAGE_CHARS)
    with get_client(sync_client=True) as client:
        retry = client.create_flow_run_from_deployment(
            flow_run.deployment_id,
            parameters=flow_run.parameters,
            job_variables=flow_run.job_variables,
            tags=[f"{CRASH_RETRY_TAG}{retries + 1}"],
            idempotency_key=f"{CRASH_RETRY_TAG}{flow_run.id}",
            state=Scheduled(scheduled_time=retry_at, message=message),
        )
    shown = (state.message, retries + 1, CRASH_RETRIES, retry.id, CRASH_RETRY_DELAY_S)
    logger.warning("crashed (%s); crash retry %d of %d: flow run %s starts in %d s", *shown)


def segstyle_flow(name: str, namer: Callable[[], str], timeout_s: int, **options: Any) -> Any:
    """Prefect's ``@flow`` with what every segstyle flow gets (see the module docstring)."""
    return flow(
        name=name,
        flow_run_name=namer,
        timeout_seconds=timeout_s,
        persist_result=False,
        result_serializer="json",
        on_crashed=[retry_crashed],
        **options,
    )


def setting(parameters: Mapping[str, Any], group: str, field: str, default: Any) -> Any:
    """A group's field, of a model (a direct call) or dict (a deployment run), else ``default``."""
    value = parameters.get(group)
    if isinstance(value, Mapping):
        return value.get(field, default)
    return getattr(value, field, default)


def run_name(subject: str, *backends: Any) -> str:
    """``<subject>-<backends>-<scheduled start's local date>`` (as its retries'), file-name safe."""
    started = flow_run.get_scheduled_start_time()
    day = started.astimezone().date().isoformat()
    return "-".join(file_name_part(str(part)) for part in (subject, *backends, day))


def run_namer(subject: Callable[[Mapping[str, Any]], str], **backends: str) -> Callable[[], str]:
    """A flow's run namer: :func:`run_name` of ``subject(parameters)`` and the chosen backends
    (``backends``: parameter group -> its default backend)."""

    def name() -> str:
        parameters = flow_run.get_parameters()
        chosen = (setting(parameters, group, "backend", d) for group, d in backends.items())
        return run_name(subject(parameters), *chosen)

    return name


class QuietExpectedFailures(logging.Filter):
    """Replaces the traceback of a :class:`~segstyle_core.errors.SegstyleError` (an expected
    failure, already in the rows and the state message) with the error's line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, SegstyleError):
            record.msg = f"{record.getMessage()}: {error_line(error)}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


#: Prefect's flow-run logger (the worker's flow-run process logs a run's end through it).
logging.getLogger("prefect.flow_runs").addFilter(QuietExpectedFailures())
