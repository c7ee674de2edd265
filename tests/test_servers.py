"""`lmforge up` / `down` / `status`: the Prefect server, MLflow server and worker start for real on
127.0.0.1 with the pinned dependencies, answer their health checks, and stop completely."""

from __future__ import annotations

import json
import os
import socket

import pytest

from conftest import free_port


# `lmforge up` / `down` / `status` (lmforge/servers.py).


def test_up_refuses_a_taken_port_and_names_it(tmp_path):
    from lmforge.servers import ServiceConfig, ServiceError, start_services

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServiceConfig(state_dir=tmp_path, prefect_port=port, mlflow_port=free_port())
        with pytest.raises(ServiceError, match=f"port {port} on 127.0.0.1 is taken"):
            start_services(config, echo=lambda line: None)
    assert not list(tmp_path.glob("*.pid"))  # nothing was started


def test_mlflow_keeps_its_store_in_the_state_dir_and_allows_only_local_hosts(tmp_path):
    from lmforge.servers import MLFLOW, ServiceConfig, service_command

    command = service_command(MLFLOW, ServiceConfig(state_dir=tmp_path, mlflow_port=5123))
    options = dict(zip(command[::2], command[1::2])) | dict(zip(command[1::2], command[2::2]))
    assert options["--backend-store-uri"] == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert options["--allowed-hosts"] == "127.0.0.1:5123,localhost:5123"
    assert options["--host"] == "127.0.0.1"


@pytest.mark.slow
def test_status_reports_every_service_healthy(lmforge_services, capsys):
    from lmforge.cli import main

    assert main(["status", "--state-dir", str(lmforge_services.state_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["prefect-server", "healthy"], ["mlflow", "healthy"], ["worker", "healthy"]
    ]
    assert (lmforge_services.state_dir / "env").read_text() == (
        f"export PREFECT_API_URL={lmforge_services.prefect_api_url}\n"
        f"export MLFLOW_TRACKING_URI={lmforge_services.mlflow_url}\n"
    )


@pytest.mark.slow
def test_up_again_leaves_running_services_alone(lmforge_services):
    from lmforge.servers import SERVICES, read_pid, start_services

    before = {name: read_pid(lmforge_services, name) for name in SERVICES}
    start_services(lmforge_services, echo=lambda line: None)
    assert {name: read_pid(lmforge_services, name) for name in SERVICES} == before


@pytest.mark.slow
def test_cli_up_then_down_stops_every_process_and_frees_the_ports(tmp_path, capsys):
    from lmforge.cli import main
    from lmforge.servers import port_is_free

    prefect_port, mlflow_port = free_port(), free_port()
    state = tmp_path / "state"
    argv = ["up", "--state-dir", str(state), "--prefect-port", str(prefect_port),
            "--mlflow-port", str(mlflow_port), "--work-pool", "up-down-test", "--no-worker"]
    try:
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"Prefect UI:  http://127.0.0.1:{prefect_port}" in out
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in out
        pids = [json.loads(p.read_text())["pid"] for p in state.glob("*.pid")]
        assert len(pids) == 2
    finally:
        assert main(["down", "--state-dir", str(state)]) == 0
    assert "Stopped: mlflow, prefect-server" in capsys.readouterr().out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert port_is_free("127.0.0.1", prefect_port) and port_is_free("127.0.0.1", mlflow_port)
    assert main(["down", "--state-dir", str(state)]) == 0
    assert "Nothing was running." in capsys.readouterr().out
