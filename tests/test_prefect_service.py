"""What the real-server tests count as a traceback in a Prefect server's log
(``tests.prefect_service.tracebacks``): every one, except the chains Prefect recovers from by
design. The logs here are written by :mod:`logging` from real chained exceptions, in the
server's format."""

from __future__ import annotations

import io
import logging
import sqlite3

import pytest

from tests.prefect_service import tracebacks

_SERVER_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"


def _log_chained(logger_name: str, message: str, cause: Exception, raised: Exception) -> str:
    """What ``logger.exception(message)`` writes for ``raised`` raised from ``cause``."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(_SERVER_FORMAT, datefmt="%H:%M:%S"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise cause
        except Exception as error:
            raise raised from error
    except Exception:
        logger.exception(message)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def _heartbeat_failure(exception_text: str) -> str:
    return _log_chained(
        "prefect.server.utilities.worker_channel",
        "Worker channel heartbeat persistence failed: work_pool=segstyle-process worker_name=w",
        sqlite3.OperationalError(exception_text),
        RuntimeError(f"(sqlite3.OperationalError) {exception_text}"),
    )


def _scheduler_failure() -> str:
    return _log_chained(
        "prefect.server.services.scheduler",
        "Unexpected error in: Scheduler",
        KeyError("bulk"),
        RuntimeError("Can't evaluate bulk DML statement"),
    )


def test_a_heartbeat_meeting_a_locked_sqlite_database_is_left_out_of_a_server_log() -> None:
    log = "INFO:     127.0.0.1:5 - GET /api/health\n" + _heartbeat_failure("database is locked")

    assert len(tracebacks(log)) == 2  # the chain: both of its tracebacks
    assert tracebacks(log, server_log=True) == []


@pytest.mark.parametrize(
    "log",
    [
        pytest.param(_heartbeat_failure("no such table: worker"), id="other-heartbeat-error"),
        pytest.param(
            _log_chained(
                "prefect.server.services.scheduler",
                "Unexpected error in: Scheduler",
                sqlite3.OperationalError("database is locked"),
                RuntimeError("(sqlite3.OperationalError) database is locked"),
            ),
            id="locked-database-elsewhere",
        ),
    ],
)
def test_any_other_error_stays_in_a_server_log(log: str) -> None:
    found = tracebacks(log, server_log=True)

    assert len(found) == 2
    assert found[0].splitlines()[0] in log.splitlines()[0]


def test_an_error_after_a_handled_one_is_still_found_with_the_line_that_logged_it() -> None:
    log = _heartbeat_failure("database is locked") + _scheduler_failure()

    found = tracebacks(log, server_log=True)

    assert len(found) == 2
    assert "Unexpected error in: Scheduler" in found[0].splitlines()[0]
    assert found[-1].splitlines()[-1] == "RuntimeError: Can't evaluate bulk DML statement"
