"""`lmforge up` / `down` / `status`: the Prefect server, MLflow server and worker start for real on
127.0.0.1 with the pinned dependencies, answer their health checks, and stop completely; no other
web page can drive them."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from conftest import free_port


# `lmforge up` / `down` / `status` (lmforge/servers.py).


def test_up_refuses_a_taken_port_and_names_it(tmp_path):
    from lmforge.cli import register_flows
    from lmforge.servers import ServiceConfig, ServiceError, start_services

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServiceConfig(state_dir=tmp_path, prefect_port=port, mlflow_port=free_port())
        with pytest.raises(ServiceError, match=f"port {port} on 127.0.0.1 is taken"):
            start_services(config, register_flows, echo=lambda line: None)
    assert not list(tmp_path.glob("*.pid"))  # nothing was started


def test_mlflow_keeps_its_store_in_the_state_dir_and_allows_only_local_hosts(tmp_path):
    from lmforge.servers import MLFLOW, ServiceConfig, service_command

    command = service_command(MLFLOW, ServiceConfig(state_dir=tmp_path, mlflow_port=5123))
    options = dict(zip(command[::2], command[1::2])) | dict(zip(command[1::2], command[2::2]))
    assert options["--backend-store-uri"] == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert options["--allowed-hosts"] == "127.0.0.1:5123,localhost:5123"
    assert options["--cors-allowed-origins"] == "http://127.0.0.1:5123,http://localhost:5123"
    assert options["--host"] == "127.0.0.1"


def test_the_prefect_login_is_generated_once_readable_by_its_owner_only(tmp_path):
    from lmforge.servers import ServiceConfig, create_prefect_auth, prefect_auth_string

    config = ServiceConfig(state_dir=tmp_path)
    login = create_prefect_auth(config)
    user, _, password = login.partition(":")
    assert user == "lmforge" and len(password) >= 32
    assert stat.S_IMODE(config.prefect_auth_file.stat().st_mode) == 0o600
    assert create_prefect_auth(config) is None  # not shown again, not replaced
    assert prefect_auth_string(config) == login


def test_the_prefect_server_demands_its_login_and_csrf_and_allows_only_its_ui_origin(tmp_path):
    from lmforge.servers import PREFECT, ServiceConfig, create_prefect_auth, service_env

    config = ServiceConfig(state_dir=tmp_path, prefect_port=4321)
    login = create_prefect_auth(config)
    env = service_env(PREFECT, config)
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == login
    assert env["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] == "true"
    origins = env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"]
    assert origins == "http://127.0.0.1:4321,http://localhost:4321"


def http(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    """(status, headers) of one request, errors included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers


def basic(login: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()}


# What a page on http://evil.example can make a browser send: a "simple" cross-origin request
# (no preflight), without the login, which only the UI's own origin keeps.
EVIL_PAGE = {"Origin": "http://evil.example", "Content-Type": "text/plain"}


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
        f'export PREFECT_API_AUTH_STRING="$(cat {lmforge_services.prefect_auth_file.resolve()})"\n'
        f"export MLFLOW_TRACKING_URI={lmforge_services.mlflow_url}\n"
    )


@pytest.mark.slow
def test_a_page_on_another_origin_cannot_create_a_flow_run(lmforge_services):
    from prefect.client.orchestration import get_client

    from lmforge.servers import prefect_client_settings

    with prefect_client_settings(lmforge_services), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("pipeline/lmforge-run")
        runs_before = len(client.read_flow_runs())
        url = f"{lmforge_services.prefect_api_url}/deployments/{deployment.id}/create_flow_run"
        status, headers = http(url, "POST", EVIL_PAGE, b'{"parameters": {}}')
        assert status in (401, 403)
        assert "access-control-allow-origin" not in headers
        # Nor may it send the login from script: the preflight for the header is refused.
        preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"}
        status, headers = http(url, "OPTIONS", preflight)
        assert status == 400 and "access-control-allow-origin" not in headers
        assert len(client.read_flow_runs()) == runs_before
    ui = {**preflight, "Origin": lmforge_services.prefect_url}
    allowed = http(url, "OPTIONS", ui)[1]["access-control-allow-origin"]
    assert allowed == lmforge_services.prefect_url


@pytest.mark.slow
def test_the_prefect_api_answers_only_requests_with_its_login(lmforge_services):
    from lmforge.servers import prefect_auth_string

    url = f"{lmforge_services.prefect_api_url}/csrf-token?client=test"
    assert http(url)[0] == 401
    assert http(url, headers=basic("lmforge:wrong"))[0] == 401
    assert http(url, headers=basic(prefect_auth_string(lmforge_services)))[0] == 200
    assert http(f"{lmforge_services.prefect_api_url}/health")[0] == 200  # open for probes


@pytest.mark.slow
def test_a_shell_that_sources_the_env_file_reaches_prefect_logged_in(lmforge_services):
    read_deployment = (
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as client:\n"
        "    print(client.read_deployment_by_name('pipeline/lmforge-run').name)"
    )
    env_file = lmforge_services.state_dir / "env"
    shell = subprocess.run(
        ["bash", "-c", f'source "{env_file}" && exec "{sys.executable}" -c "$0"', read_deployment],
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")},
        capture_output=True, text=True, timeout=120,
    )
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert shell.stdout.strip() == "lmforge-run"


@pytest.mark.slow
def test_mlflow_refuses_other_origins_and_host_names(lmforge_services):
    create = f"{lmforge_services.mlflow_url}/api/2.0/mlflow/experiments/create"
    status, headers = http(create, "POST", EVIL_PAGE, b'{"name": "from-evil-example"}')
    assert status == 403 and "access-control-allow-origin" not in headers
    # DNS rebinding: evil.example resolving to 127.0.0.1 makes the page same-origin, not the Host.
    search = f"{lmforge_services.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http(search, headers={"Host": f"evil.example:{lmforge_services.mlflow_port}"})[0] == 403
    status, headers = http(search, headers={"Origin": lmforge_services.mlflow_url})
    assert status == 200
    assert headers["access-control-allow-origin"] == lmforge_services.mlflow_url


@pytest.mark.slow
def test_up_again_leaves_running_services_alone(lmforge_services):
    from lmforge.cli import register_flows
    from lmforge.servers import SERVICES, read_pid, start_services

    before = {name: read_pid(lmforge_services, name) for name in SERVICES}
    start_services(lmforge_services, register_flows, echo=lambda line: None)
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
        login = (state / "prefect-auth").read_text().strip()
        # Shown once, when made (a later `up` keeps it: see the test of create_prefect_auth).
        assert out.count(login) == 1 and f"Prefect login (the UI asks for it): {login}" in out
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
