"""docker-compose.yml cannot run here (no Docker engine): check that it is valid and wired, then
start the same services natively — PostgreSQL, a Prefect server on it with API auth, an MLflow
server on it with basic auth (through the compose image's entrypoint script)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^(\w+)=(.*)$", text, flags=re.MULTILINE))


def test_every_service_has_an_image_or_a_buildable_dockerfile_and_a_healthcheck_or_dependency():
    services = load_compose()["services"]
    expected = {"postgres", "prefect-server", "s3", "create-bucket", "mlflow", "deploy", "worker"}
    assert expected <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert "healthcheck" in service or "depends_on" in service, name


def test_images_are_pinned_to_versions():
    for name, service in load_compose()["services"].items():
        if "image" in service:
            tag = service["image"].rpartition(":")[2]
            assert re.match(r"v?\d+\.\d+", tag), f"{name}: {service['image']} is not pinned"


def test_dependencies_exist_and_wait_for_health_or_completion():
    services = load_compose()["services"]
    one_shot = {name for name, service in services.items() if service.get("restart") == "no"}
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            finished = dependency in one_shot
            wanted = "service_completed_successfully" if finished else "service_healthy"
            assert condition == {"condition": wanted}, f"{name} -> {dependency}"
            if wanted == "service_healthy":
                assert "healthcheck" in services[dependency], dependency


def test_prefect_runs_on_postgres_with_its_api_auth_string():
    services = load_compose()["services"]
    server = services["prefect-server"]["environment"]
    assert server["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/prefect" in server["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING")
    assert server["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] == "true"
    origins = interpolate(server["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"], env_example())
    assert origins == "http://localhost:4200,http://127.0.0.1:4200"
    for client in ("worker", "deploy"):
        env = services[client]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["PREFECT_API_AUTH_STRING"] == server["PREFECT_SERVER_API_AUTH_STRING"]


def test_mlflow_runs_on_postgres_with_s3_artifacts_basic_auth_and_its_service_name_allowed():
    services = load_compose()["services"]
    mlflow = services["mlflow"]
    options = dict(arg.lstrip("-").split("=", 1) for arg in mlflow["command"])
    # SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3, which the image does not have.
    backend = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql+psycopg2://")
    assert options["artifacts-destination"].startswith("s3://")
    assert "mlflow:5000" in options["allowed-hosts"].split(",")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:8333"
    dockerfile = (ROOT / mlflow["build"]["dockerfile"]).read_text()
    assert all(p in dockerfile for p in ("psycopg2-binary", "boto3", "Flask-WTF"))
    assert "--app-name basic-auth" in (ROOT / "infra" / "mlflow-entrypoint.sh").read_text()
    worker = services["worker"]["environment"]
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["MLFLOW_TRACKING_PASSWORD"] == mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"]


def test_the_uis_are_published_on_127_0_0_1_unless_lmforge_bind_says_otherwise():
    published = {name: service["ports"] for name, service in load_compose()["services"].items()
                 if "ports" in service}
    assert set(published) == {"prefect-server", "mlflow"}
    for ports in published.values():
        for port in ports:
            assert port.startswith("${LMFORGE_BIND:-127.0.0.1}:"), port
    assert env_example()["LMFORGE_BIND"] == "127.0.0.1"


def test_no_password_is_put_on_a_command_line():
    # Anyone on the host can read a process's arguments; environments stay private.
    for name, service in load_compose()["services"].items():
        argv = json.dumps([service.get("entrypoint"), service.get("command")])
        assert not re.search(r"\$\{\w*(PASSWORD|SECRET|AUTH|KEY)", argv), name


GUARD = "/lmforge/refuse-placeholder-secrets.sh"
GUARDED = ("postgres", "prefect-server", "s3", "mlflow")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` (`$$` is a literal `$`)."""
    def substitute(match: re.Match) -> str:
        name, operator, default = match.group(1), match.group(2), match.group(3)
        return variables.get(name) or (default if operator == ":-" else "")
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", substitute, value).replace("$$", "$")


def guarded_start(name: str, variables: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the guard as service `name`'s container would, with its environment from `variables`,
    before a stand-in for the service's own command."""
    service = load_compose()["services"][name]
    argv = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
    assert argv[:2] == ["/bin/sh", GUARD], f"{name} does not start through the guard"
    assert f"./infra/refuse-placeholder-secrets.sh:{GUARD}:ro" in service["volumes"], name
    env = {key: interpolate(str(value), variables) for key, value in service["environment"].items()}
    return subprocess.run(
        ["sh", str(ROOT / "infra" / "refuse-placeholder-secrets.sh"), "echo", "started"],
        env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=10,
    )


@pytest.mark.parametrize("name", GUARDED)
def test_servers_refuse_to_start_with_the_env_example_placeholders(name):
    refused = guarded_start(name, env_example())
    assert refused.returncode == 78 and "started" not in refused.stdout
    assert "refusing to start" in refused.stderr and "change-me" in refused.stderr
    assert "PASSWORD" in refused.stderr or "SECRET" in refused.stderr or "AUTH" in refused.stderr


@pytest.mark.parametrize("name", GUARDED)
def test_servers_start_once_every_placeholder_is_replaced(name):
    real = {key: value.replace("change-me", "Xq7-real") for key, value in env_example().items()}
    started = guarded_start(name, real)
    assert started.returncode == 0 and started.stdout == "started\n", started.stderr


def test_the_init_script_creates_every_database_the_services_use():
    services = load_compose()["services"]
    init_sql = (ROOT / "infra" / "postgres-init" / "01-databases.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", init_sql))
    urls = json.dumps(services)
    used = set(re.findall(r"@postgres:5432/(\w+)", urls))
    assert used == created == {"prefect", "mlflow", "mlflow_auth"}


def test_named_volumes_are_declared_and_bind_mounts_exist():
    compose = load_compose()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} missing"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} undeclared"


def test_dockerfiles_copy_only_paths_that_exist():
    for dockerfile in ("Dockerfile", "mlflow.Dockerfile"):
        text = (ROOT / "infra" / dockerfile).read_text()
        for sources in re.findall(r"^COPY (.+) \S+$", text, flags=re.MULTILINE):
            for source in sources.split():
                assert (ROOT / source).exists(), f"{dockerfile}: {source}"


def test_compose_variables_are_documented_in_env_example_without_secrets():
    variables = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    documented = env_example()
    assert variables <= set(documented), variables - set(documented)
    for key, value in documented.items():
        if any(word in key for word in ("PASSWORD", "SECRET", "AUTH_STRING")):
            assert value.startswith("change-me") or value.endswith(":change-me"), key


# The same services, started natively on 127.0.0.1.


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} before {url} answered:\n"
                        f"{process.stdout.read() if process.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s")


def serve(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    # Own process group: the servers start workers that must go down with them.
    return subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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


def as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI and this machine run tests as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL 15 server with the compose init script applied; yields its port."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN}")
    # Not under pytest's tmp dir: the postgres user cannot enter root's private directories.
    root = Path(tempfile.mkdtemp(prefix="lmforge-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "lmforge", "--auth=trust"]
    subprocess.run(as_postgres_user(initdb), check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(as_postgres_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options,
                                     "-l", str(root / "log"), "-w", "start"]), check=True)
    try:
        subprocess.run(
            [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "lmforge", "-d",
             "postgres", "-v", "ON_ERROR_STOP=1", "-f",
             str(ROOT / "infra" / "postgres-init" / "01-databases.sql")],
            check=True, capture_output=True,
        )
        yield port
    finally:
        subprocess.run(as_postgres_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast",
                                         "stop"]), check=False)
        shutil.rmtree(root, ignore_errors=True)


def process_group_command_lines(group: int) -> list[str]:
    """The command lines (/proc/<pid>/cmdline) of every process in process group `group`."""
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            # Field 5 of stat is the process group; the name in field 2 may hold spaces.
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
            if proc.name.isdigit() and int(fields[2]) == group:
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue  # not a process, or it exited meanwhile
    return lines


def api_request(
    url: str, auth: str | None = None, body: dict | None = None, method: str = "POST"
) -> int:
    """POST `body` (JSON) to `url` (or GET it), optionally with HTTP basic auth `user:password`;
    the status."""
    data = json.dumps(body or {}).encode() if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


TINY_FLOW = """
from prefect import flow

@flow(name="compose-check")
def compose_check() -> int:
    return 42

assert compose_check() == 42
"""


@pytest.mark.slow
def test_prefect_on_postgres_with_an_auth_string_serves_only_authenticated_clients(
    postgres, tmp_path
):
    port, auth = free_port(), "admin:test-secret"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL":
               f"postgresql+asyncpg://lmforge@127.0.0.1:{postgres}/prefect",
           "PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true"}
    env.pop("PREFECT_API_URL", None)
    server = serve([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                    "--port", str(port)], env, tmp_path)
    api = f"http://127.0.0.1:{port}/api"
    try:
        assert wait_healthy(f"{api}/health", server) == "true"  # health stays open for probes
        assert api_request(f"{api}/flows/filter") == 403  # a change needs a CSRF token first
        token = f"{api}/csrf-token?client=compose-check"  # ... which needs the login
        assert api_request(token, method="GET") == 401
        assert api_request(token, auth="admin:wrong", method="GET") == 401
        assert api_request(token, auth=auth, method="GET") == 200
        client_env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": auth,
                      "PREFECT_HOME": str(tmp_path / "client")}
        run = subprocess.run([sys.executable, "-c", TINY_FLOW], env=client_env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        unauthenticated = subprocess.run(
            [sys.executable, "-c", TINY_FLOW],
            env={**client_env, "PREFECT_API_AUTH_STRING": ""}, capture_output=True, text=True,
            timeout=120,
        )
        assert unauthenticated.returncode != 0
        assert "401" in unauthenticated.stderr or "Unauthorized" in unauthenticated.stderr
    finally:
        stop(server)


@pytest.mark.slow
def test_mlflow_on_postgres_with_basic_auth_through_the_compose_entrypoint(postgres, tmp_path):
    pytest.importorskip("psycopg2", reason="pip install psycopg2-binary")
    pytest.importorskip("flask_wtf", reason="pip install 'mlflow[auth]'")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    port = free_port()
    # A password in the URIs, as in compose (trust authentication ignores it).
    database_password = "pg-password-for-the-test"
    database = f"postgresql+psycopg2://lmforge:{database_password}@127.0.0.1:{postgres}"
    # The entrypoint execs `mlflow` from PATH, as in the image: this venv's.
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": path,
           "MLFLOW_BACKEND_STORE_URI": f"{database}/mlflow",
           "MLFLOW_AUTH_DATABASE_URI": f"{database}/mlflow_auth",
           "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
           "MLFLOW_AUTH_ADMIN_PASSWORD": "test-secret-password",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-key", "TMPDIR": str(tmp_path)}
    # As compose starts it: the placeholder guard, then the image's entrypoint.
    server = serve(
        ["sh", str(ROOT / "infra" / "refuse-placeholder-secrets.sh"),
         "sh", str(ROOT / "infra" / "mlflow-entrypoint.sh"), "--host", "127.0.0.1",
         "--port", str(port), "--artifacts-destination", str(tmp_path / "artifacts"),
         "--workers", "1", "--allowed-hosts", f"127.0.0.1:{port}"],
        env, tmp_path,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(f"{uri}/health", server).strip() == "OK"
        command_lines = process_group_command_lines(server.pid)
        assert any("mlflow" in line for line in command_lines), command_lines
        assert not [line for line in command_lines if database_password in line]
        assert api_request(f"{uri}/api/2.0/mlflow/experiments/create", body={"name": "x"}) == 401
        os.environ.update(
            MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="test-secret-password"
        )
        try:
            client = MlflowClient(tracking_uri=uri)
            run = client.create_run(client.create_experiment("compose-check"))
            client.log_metric(run.info.run_id, "loss", 1.5)
            assert client.get_run(run.info.run_id).data.metrics == {"loss": 1.5}
            # A refusal, not a transient error: no retries with backoff.
            os.environ.update(MLFLOW_TRACKING_PASSWORD="wrong", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
            with pytest.raises(MlflowException):
                MlflowClient(tracking_uri=uri).get_run(run.info.run_id)
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME")
            os.environ.pop("MLFLOW_TRACKING_PASSWORD")
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
    finally:
        stop(server)
