"""Shared fixtures: an isolated Prefect API and MLflow store per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmforge.telemetry import turn_off_telemetry

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

turn_off_telemetry()  # before Prefect and MLflow are imported

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


# Small enough for two CPU cores: the defaults of the deployments the service tests trigger.
TINY_PIPELINE = {"shards": {"vocab_size": 300}, "train": {"max_steps": 2, "batch_size": 2, "seq_len": 16}}


@pytest.fixture(scope="session")
def lmforge_services(tmp_path_factory):
    """`lmforge up` for real, on free ports: a Prefect server, an MLflow server and a process
    worker on 127.0.0.1, the deployments registered with a tiny `pipeline` as their default."""
    from lmforge.cli import register_flows
    from lmforge.servers import ServiceConfig, start_services, stop_services

    root = tmp_path_factory.mktemp("services")
    config = ServiceConfig(
        state_dir=root / "state",
        prefect_port=free_port(),
        mlflow_port=free_port(),
        work_pool="lmforge-services-test",
        working_dir=root / "workspace",
        worker_poll_seconds=2,
        deployment_parameters={"pipeline": {"run": {"work_dir": "work/ui"}, **TINY_PIPELINE}},
    )
    try:
        start_services(config, register_flows, echo=lambda line: None)
        yield config
    finally:
        stop_services(config)


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_final_state(client, flow_run_id, timeout: float, poll: float = 1.0):
    """The flow run's state once final (Completed, Failed, ...), or its last state at timeout."""
    import time

    deadline = time.monotonic() + timeout
    state = client.read_flow_run(flow_run_id).state
    while not state.is_final() and time.monotonic() < deadline:
        time.sleep(poll)
        state = client.read_flow_run(flow_run_id).state
    return state
