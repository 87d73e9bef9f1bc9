"""What the real-server tests count as a traceback in a Prefect server's log
(``tests.prefect_service.tracebacks``): every one, except the chains Prefect recovers from by
design. The logs here are written by :mod:`logging` from real chained exceptions (SQLAlchemy's
own, where Prefect's server raises them), in the server's format."""

from __future__ import annotations

import io
import logging
import sqlite3

import pytest
import sqlalchemy.exc

from tests.prefect_service import tracebacks

_SERVER_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"
_HEARTBEAT_FAILED = "Worker channel heartbeat persistence failed: work_pool=segstyle-process"


def _log_chained(message: str, *chain: Exception) -> str:
    """What ``logger.exception(message)`` writes for ``chain[-1]``, each exception raised from
    the one before it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(_SERVER_FORMAT, datefmt="%H:%M:%S"))
    logger = logging.getLogger("segstyle.tests.server_log")
    logger.addHandler(handler)
    logger.propagate = False

    def raise_from(index: int) -> None:
        if index == 0:
            raise chain[0]
        try:
            raise_from(index - 1)
        except Exception as error:
            raise chain[index] from error

    try:
        raise_from(len(chain) - 1)
    except Exception:
        logger.exception(message)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue()


def _sqlalchemy_error(cause: str) -> sqlalchemy.exc.OperationalError:
    """SQLAlchemy's error around a DBAPI one (its text spans several lines: SQL, background)."""
    return sqlalchemy.exc.OperationalError(
        "UPDATE worker SET last_heartbeat_time=:t", {"t": 0}, sqlite3.OperationalError(cause)
    )


def _heartbeat_failure(cause: str) -> str:
    return _log_chained(
        _HEARTBEAT_FAILED, sqlite3.OperationalError(cause), _sqlalchemy_error(cause)
    )


def _scheduler_failure() -> str:
    return _log_chained(
        "Unexpected error in: Scheduler",
        KeyError("bulk"),
        sqlalchemy.exc.InvalidRequestError("Can't evaluate bulk DML statement"),
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
                "Unexpected error in: Scheduler",
                sqlite3.OperationalError("database is locked"),
                _sqlalchemy_error("database is locked"),
            ),
            id="locked-database-elsewhere",
        ),
        pytest.param(
            _log_chained(
                _HEARTBEAT_FAILED,
                RuntimeError("Worker channel work pool no longer exists"),
                sqlite3.OperationalError("database is locked"),
            ),
            id="another-error-in-the-chain",
        ),
    ],
)
def test_any_other_error_stays_in_a_server_log(log: str) -> None:
    found = tracebacks(log, server_log=True)

    assert len(found) == 2
    assert found[0].splitlines()[0] == log.splitlines()[0]


def test_an_error_after_a_handled_one_is_still_found_with_the_line_that_logged_it() -> None:
    log = _heartbeat_failure("database is locked") + _scheduler_failure()

    found = tracebacks(log, server_log=True)

    assert len(found) == 2
    assert "Unexpected error in: Scheduler" in found[0].splitlines()[0]
    assert found[-1].splitlines()[-1].endswith("Can't evaluate bulk DML statement")


def test_a_traceback_cut_off_at_the_end_of_a_log_is_found() -> None:
    whole = _scheduler_failure().splitlines()
    last_frame = max(n for n, line in enumerate(whole) if line.startswith("  File "))
    cut = "\n".join(whole[: last_frame + 1])  # the log ends before the exception's line

    found = tracebacks(_heartbeat_failure("database is locked") + cut, server_log=True)

    assert len(found) == 2
    assert found[-1].splitlines()[-1] == whole[last_frame]
