"""The servers the README tells users to start do start with the pinned dependencies, and answer
their health checks on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"server exited with {process.returncode} before {url} answered:\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s")


def serve(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Own process group: the servers start workers that must go down with them.
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_prefect_server_starts_and_answers_health(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    process = serve([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env)
    try:
        assert wait_healthy(f"http://127.0.0.1:{port}/api/health", process) == "true"
    finally:
        stop(process)


def test_mlflow_server_starts_on_a_sqlite_store_and_answers_health(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    process = serve(
        [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1",
        ],
        env,
    )
    try:
        assert wait_healthy(f"http://127.0.0.1:{port}/health", process).strip() == "OK"
    finally:
        stop(process)
