"""What every segstyle flow run gets from Prefect, set once for all flows.

- A readable name: ``<subject>-<segmenter>-<stylizer>-<date>`` (``zurich-grabcut-feedforward-
  2026-12-02``), the date of the run's scheduled start in the worker's time zone.
- A time limit (``timeout_seconds``): a run that passes it ends Failed (``TimedOut``).
- No result in Prefect's result store: a flow's result is its return value in memory
  (``persist_result=False``); what Prefect still writes on an unexpected exception is JSON
  (``result_serializer="json"``), never a pickle.
- A retry after a crash: Prefect's flow ``retries`` retry Failed runs only, never Crashed ones
  (a killed process, a lost machine). :func:`retry_crashed`, an ``on_crashed`` hook, starts a
  crashed deployment run again as a new run, at most :data:`CRASH_RETRIES` times in a row.
  Failed runs are not retried: an image fails on its input, which a rerun does not change.
- A state message short enough for the UI's column (:func:`state_message`).
- A quiet expected failure: a worker's flow-run process logs every failed run's end with a
  traceback ("Engine execution exited with unexpected exception"); for a segstyle error (bad
  input: its rows name it) :class:`QuietExpectedFailures` keeps that one line and its error,
  without the traceback.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run
from prefect.states import Scheduled, State

from segstyle_core.errors import SegstyleError, error_line

#: A dataset run's time limit: a nightly run ends before the next night's is due.
DATASET_TIMEOUT_S = 23 * 3600
#: A photo's time limit (Gatys on a CPU at full size takes minutes, not hours).
PHOTO_TIMEOUT_S = 2 * 3600
#: A video's time limit.
VIDEO_TIMEOUT_S = 12 * 3600
#: How many times a crashed deployment run is put back in its queue; then it stays Crashed.
CRASH_RETRIES = 2
#: The tag of a crash retry: ``crash-retry-1``, ``crash-retry-2``, ...
CRASH_RETRY_TAG = "crash-retry-"
#: Seconds a crashed run's retry waits before it starts.
CRASH_RETRY_DELAY_S = 10
#: The longest state message: the width of the UI's state column.
STATE_MESSAGE_CHARS = 200


def _crash_retries(flow_run: FlowRun) -> int:
    """How many crash retries came before ``flow_run`` (its ``crash-retry-<n>`` tag)."""
    numbers = [t.removeprefix(CRASH_RETRY_TAG) for t in flow_run.tags or ()]
    return max((int(n) for n in numbers if n.isdigit()), default=0)


def retry_crashed(flow: Any, flow_run: FlowRun, state: State[Any]) -> None:
    """``on_crashed`` hook: start the crashed run again as a new run of its deployment, with
    the same parameters, tagged ``crash-retry-<n>``, :data:`CRASH_RETRY_DELAY_S` from now;
    at most :data:`CRASH_RETRIES` times in a row. The crashed run stays Crashed (and notifies
    as such); the new one takes over the rows its images had finished
    (:class:`segstyle_core.results.RunRows`) and every cached stage.

    A new run, not the same one rescheduled: the worker reports a crash once more after its
    hooks have run, which would undo a rescheduling. The worker runs this hook when the flow's
    process died (``SIGKILL``, out of memory), the flow's process when it caught the crash
    itself; the idempotency key makes both one retry. A run outside a deployment (``segstyle
    run``) has nothing to start again: it stays Crashed.
    """
    if flow_run.deployment_id is None:
        return
    logger = flow_run_logger(flow_run)
    retries = _crash_retries(flow_run)
    if retries >= CRASH_RETRIES:
        logger.error("crashed after %d crash retries: not retried again", retries)
        return
    retry_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=CRASH_RETRY_DELAY_S)
    with get_client(sync_client=True) as client:
        retry = client.create_flow_run_from_deployment(
            flow_run.deployment_id,
            parameters=flow_run.parameters,
            job_variables=flow_run.job_variables,
            tags=[f"{CRASH_RETRY_TAG}{retries + 1}"],
            idempotency_key=f"{CRASH_RETRY_TAG}{flow_run.id}",
            state=Scheduled(
                scheduled_time=retry_at,
                message=state_message(f"crash retry {retries + 1} of {flow_run.name}"),
            ),
        )
    logger.warning(
        "crashed (%s); crash retry %d of %d: flow run %s starts in %d s",
        state.message,
        retries + 1,
        CRASH_RETRIES,
        retry.id,
        CRASH_RETRY_DELAY_S,
    )


#: The options every segstyle flow is declared with (beside its name, timeout and run name).
FLOW_OPTIONS: dict[str, Any] = {
    "persist_result": False,
    "result_serializer": "json",
    "on_crashed": [retry_crashed],
}


def state_message(text: str, limit: int = STATE_MESSAGE_CHARS) -> str:
    """``text`` on one line, cut at the last word boundary before ``limit`` characters
    (then ending in ``…``)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > 0 else cut).rstrip(" ,;:(") + "…"


def _slug(text: str) -> str:
    """``text`` as part of a file name: runs of characters other than letters, digits and
    ``_.+-`` become ``_``."""
    return re.sub(r"[^\w.+-]+", "_", text, flags=re.ASCII).strip("_.") or "x"


_MISSING = object()


def setting(parameters: Mapping[str, Any], group: str, field: str, default: Any) -> Any:
    """A field of a parameter group, whether the group is a model (a direct call) or a dict
    (a deployment run); ``default`` where either is missing."""
    value = parameters.get(group)
    if isinstance(value, Mapping):
        found = value.get(field, _MISSING)
    else:
        found = getattr(value, field, _MISSING)
    return default if found is _MISSING else found


def city_part(city: Any) -> str:
    """A city selection in a run name: ``zurich``, ``aachen+zurich``, ``5-cities``, ``all``
    or ``random``."""
    if city is None:
        return "random"
    names = sorted(
        {str(name).strip() for name in (city.split(",") if isinstance(city, str) else city)}
    )
    return "+".join(names) if len(names) <= 3 else f"{len(names)}-cities"


def run_name(subject: str, *backends: Any) -> str:
    """``<subject>-<backend>...-<date>``, each part usable in a file name; the date is the
    run's scheduled start (the same on its retries), in this machine's time zone."""
    started = flow_run.get_scheduled_start_time()
    day = started.astimezone().date().isoformat()
    return "-".join(_slug(str(part)) for part in (subject, *backends, day))


class QuietExpectedFailures(logging.Filter):
    """Drops the traceback of a log record whose exception is a
    :class:`~segstyle_core.errors.SegstyleError` (an expected failure, already one line in the
    rows and the state message), appending the error's line to the message instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, SegstyleError):
            record.msg = f"{record.getMessage()}: {error_line(error)}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


#: Prefect's flow-run logger (the worker's flow-run process logs a run's end through it).
logging.getLogger("prefect.flow_runs").addFilter(QuietExpectedFailures())
