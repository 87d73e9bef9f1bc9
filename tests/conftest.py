"""Test-wide setup: Prefect gets its own home and one session-wide test server.

Prefect reads its settings at import, so the environment is set here, before any test module
imports it. Only tests that use the ``prefect_api`` fixture start the server (10–20 s).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="segstyle-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "ERROR"
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(Path(_PREFECT_HOME) / "storage")
# Tests never read real checkpoints from the user's cache.
os.environ["SEGSTYLE_WEIGHTS_DIR"] = str(Path(_PREFECT_HOME) / "no-weights")
os.environ["TORCH_HOME"] = str(Path(_PREFECT_HOME) / "no-torch-home")
# the per-machine Gatys calibration: one per test session, never the user's cache
os.environ["SEGSTYLE_CALIBRATION"] = str(Path(_PREFECT_HOME) / "calibration.json")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One Prefect test server for the whole session (its SQLite lives in PREFECT_HOME)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``prefect server start`` subprocess per test module (scheduler every 2 s).

    Yields a :class:`tests.prefect_service.PrefectService` (``api_url``, ``ui_url``, ``home``,
    ``log_path``, ``env()``, ``run()``, ``client()``). Teardown fails on a traceback in its log.
    """
    from tests.prefect_service import prefect_service

    with prefect_service(tmp_path_factory.mktemp("prefect-server")) as service:
        yield service


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated Cityscapes-layout dataset (256×128, 3 annotated frames per city)."""
    from segstyle_core.demo.dataset import generate_demo_dataset

    return generate_demo_dataset(
        tmp_path_factory.mktemp("demo") / "cityscapes", size=(256, 128), frames_per_city=3
    )
