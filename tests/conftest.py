"""Shared fixtures: an isolated Prefect API and MLflow store per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# Prefect binds its console log handler to the streams of the moment its logging is set up (the
# first flow definition): do it now, under pytest's session-wide capture, not inside a test's
# short-lived `capsys`, whose closed stream would break every later flow run in the process.
import prefect.logging.configuration  # noqa: E402

prefect.logging.configuration.ensure_logging_setup()


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A throwaway Prefect server (SQLite) for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not present")
    return SHARED
