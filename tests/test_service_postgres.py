"""tests/test_service.py's essential checks on PostgreSQL, the database Prefect recommends for
production (``PREFECT_API_DATABASE_CONNECTION_URL``, as ``make server`` passes it on).

A throwaway PostgreSQL (``tests/postgres.py``) on a free port, a database for Prefect, and a
``prefect server start`` subprocess pointed at it. The tests imported below run here as they are,
against this module's ``prefect_server``: a plain ``prefect deploy --all`` of the checkout's
prefect.yaml, the scheduler's runs for every active schedule, and a ``prefect worker start``
that runs the offline demo deployment (1 image) to Completed, its Parquet file read with pandas.
Then the runs and deployments the API reports must be rows of PostgreSQL, and the server must
have made no SQLite database.

PostgreSQL must be installed (Debian: ``apt-get install -y postgresql``); without it these tests
fail, they do not skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.postgres import PostgresServer, postgres_server
from tests.prefect_service import PrefectService, prefect_service
from tests.test_service import (  # the fixtures and tests run here too, on PostgreSQL
    deployed,
    test_scheduler_creates_runs_for_every_active_schedule,
    test_worker_runs_offline_deployment,
    worker,
)

__all__ = [
    "deployed",
    "test_scheduler_creates_runs_for_every_active_schedule",
    "test_worker_runs_offline_deployment",
    "worker",
]

pytestmark = pytest.mark.slow

DATABASE = "prefect"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server with an empty database :data:`DATABASE`."""
    with postgres_server() as server:
        server.create_database(DATABASE)
        yield server


@pytest.fixture(scope="module")
def prefect_server(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrefectService]:
    """The ``prefect_server`` of tests/conftest.py, its database in :func:`postgres`."""
    with prefect_service(
        tmp_path_factory.mktemp("prefect-server-postgres"),
        extra_env={"PREFECT_API_DATABASE_CONNECTION_URL": postgres.url(DATABASE)},
    ) as service:
        yield service


def test_the_server_stores_everything_in_postgresql(
    prefect_server: PrefectService, postgres: PostgresServer, deployed: dict[str, Any]
) -> None:
    with prefect_server.client() as client:
        api_runs = {str(run.id) for run in client.read_flow_runs()}
        api_deployments = {str(d.id) for d in client.read_deployments()}
    assert api_runs, "the API reports no flow run (the tests above should have made some)"
    assert set(postgres.query(DATABASE, "SELECT id FROM deployment")) == api_deployments
    missing = api_runs - set(postgres.query(DATABASE, "SELECT id FROM flow_run"))
    assert not missing, f"flow runs the API reports that PostgreSQL does not hold: {missing}"
    sqlite = sorted(Path(prefect_server.home).rglob("*.db"))
    assert not sqlite, f"the server made SQLite databases: {sqlite}"
