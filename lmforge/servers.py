"""Local services for operating lmforge from a browser: a Prefect server (API + UI), an MLflow
tracking server and a Prefect process worker, all on 127.0.0.1 (`lmforge up` / `down` / `status`).

Each service runs detached in its own process group, with a pid file and a log under the state
directory, so `down` from another shell stops it and every process it started. Prefect keeps its
SQLite database in `<state>/prefect`, MLflow its SQLite store and artifacts in `<state>/mlflow`.

Neither server can be driven from another web page: each answers cross-origin requests only from
its own UI's origin, the Prefect API demands a login (`<state>/prefect-auth`, generated on the
first `up`, readable by its owner only) and a CSRF token for every change, and MLflow refuses
Host headers other than its own address (DNS rebinding). Prefect has no Host check; a rebound
page has the attacker's origin, so the browser sends it no stored login: the API stays closed.

Without any of these, a command serves the Prefect API itself, from a thread, for as long as it
runs (`command_prefect_api`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.stopping import process_group_alive, stop_process_group
from lmforge.telemetry import TELEMETRY_OFF

PREFECT = "prefect-server"
MLFLOW = "mlflow"
WORKER = "worker"
# Started in this order, stopped in the reverse one (the worker talks to both servers).
SERVICES = (PREFECT, MLFLOW, WORKER)


class ServiceError(LmforgeError, RuntimeError):
    """A service could not start (port taken, crashed, never healthy) or stop."""


@dataclass(frozen=True)
class ServiceConfig:
    """Where the local services keep their state, and where they listen."""

    state_dir: Path = Path("work/services")
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    work_pool: str = "lmforge"
    # The worker starts flow runs here: relative parameters (work_dir=work/pipeline) resolve here.
    working_dir: Path = Path(".")
    start_worker: bool = True
    # Prefect's default is 15 s: a UI-triggered run waits that long before it starts.
    worker_poll_seconds: int = 5
    # Default parameters of the registered deployments, by flow name (e.g. a small `pipeline`).
    deployment_parameters: Mapping[str, dict] = field(default_factory=dict)
    health_timeout: float = 180.0

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_auth_file(self) -> Path:
        """`user:password` of the Prefect API (and of its UI's login page)."""
        return self.state_dir / "prefect-auth"

    def ui_origins(self, port: int) -> str:
        """The origins a browser shows a UI on this port under: the only ones allowed CORS."""
        return f"http://{self.host}:{port},http://localhost:{port}"

    def client_env(self) -> dict[str, str]:
        """What a process exports to send flows to these servers (the login included)."""
        return {"PREFECT_API_URL": self.prefect_api_url,
                "PREFECT_API_AUTH_STRING": prefect_auth_string(self),
                "MLFLOW_TRACKING_URI": self.mlflow_url}


PREFECT_USER = "lmforge"


def create_prefect_auth(config: ServiceConfig) -> str | None:
    """Generate the Prefect API login into the state directory (mode 0600) unless it exists;
    returns it when it was just created, else None."""
    path = config.prefect_auth_file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two `up`s at once cannot each write (and print) a different login.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    auth = f"{PREFECT_USER}:{secrets.token_urlsafe(24)}"
    with os.fdopen(fd, "w") as file:
        file.write(auth + "\n")
    return auth


def prefect_auth_string(config: ServiceConfig) -> str:
    """The Prefect API login `up` generated for this state directory."""
    try:
        return config.prefect_auth_file.read_text().strip()
    except FileNotFoundError:
        raise ServiceError(
            f"{config.prefect_auth_file} is missing, so nothing can log in to the Prefect server "
            "of this state directory: run `lmforge down` then `lmforge up` (a new login is made)"
        ) from None


def shell_exports(config: ServiceConfig) -> list[str]:
    """`export` lines pointing a shell's flows at these servers; the login is read from its file
    when the line runs, so these lines (and `<state>/env`) can be shown without revealing it."""
    auth_file = shlex.quote(str(config.prefect_auth_file.resolve()))
    values = {**config.client_env(), "PREFECT_API_AUTH_STRING": f'"$(cat {auth_file})"'}
    return [f"export {key}={value}" for key, value in values.items()]


@contextlib.contextmanager
def prefect_client_settings(config: ServiceConfig) -> Iterator[None]:
    """Prefect clients created inside talk to this server, logged in."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = {PREFECT_API_URL: config.prefect_api_url,
                PREFECT_API_AUTH_STRING: prefect_auth_string(config)}
    with temporary_settings(settings):
        yield


def service_command(name: str, config: ServiceConfig) -> list[str]:
    """The command line that runs service `name` in the foreground."""
    state = config.state_dir.resolve()
    if name == PREFECT:
        return [sys.executable, "-m", "prefect", "server", "start",
                "--host", config.host, "--port", str(config.prefect_port)]
    if name == MLFLOW:
        hosts = f"{config.host}:{config.mlflow_port},localhost:{config.mlflow_port}"
        return [sys.executable, "-m", "mlflow", "server",
                "--host", config.host, "--port", str(config.mlflow_port),
                "--backend-store-uri", f"sqlite:///{state / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination", str(state / "mlflow" / "artifacts"),
                "--allowed-hosts", hosts,
                "--cors-allowed-origins", config.ui_origins(config.mlflow_port),
                "--workers", "1"]
    if name == WORKER:
        return [sys.executable, "-m", "prefect", "worker", "start",
                "--pool", config.work_pool, "--type", "process"]
    raise ValueError(f"unknown service {name!r}: one of {', '.join(SERVICES)}")


def service_env(name: str, config: ServiceConfig) -> dict[str, str]:
    env = {**os.environ, **TELEMETRY_OFF}
    if name == PREFECT:
        env.pop("PREFECT_API_URL", None)  # the server must not try to reach another one
        env["PREFECT_HOME"] = str(config.state_dir.resolve() / "prefect")
        # The UI (in the browser) calls the API at this address; the default is port 4200.
        env["PREFECT_SERVER_UI_API_URL"] = config.prefect_api_url
        env["PREFECT_SERVER_API_AUTH_STRING"] = prefect_auth_string(config)
        env["PREFECT_SERVER_CSRF_PROTECTION_ENABLED"] = "true"
        env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"] = config.ui_origins(config.prefect_port)
    elif name == WORKER:
        env.update(config.client_env())
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(config.worker_poll_seconds)
    return env


def pid_file(config: ServiceConfig, name: str) -> Path:
    return config.state_dir / f"{name}.pid"


def log_file(config: ServiceConfig, name: str) -> Path:
    return config.state_dir / "logs" / f"{name}.log"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # SO_REUSEADDR: a port in TIME_WAIT after a clean stop is free to listen on again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def read_pid(config: ServiceConfig, name: str) -> int | None:
    """The pid of a running service `name`, or None (a stale pid file is removed)."""
    path = pid_file(config, name)
    if not path.is_file():
        return None
    pid = json.loads(path.read_text())["pid"]
    if process_group_alive(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


def launch(name: str, config: ServiceConfig) -> int:
    """Start service `name` detached, in a new session (its own process group); returns its pid."""
    log = log_file(config, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    cwd = config.working_dir.resolve() if name == WORKER else config.state_dir.resolve()
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            service_command(name, config), env=service_env(name, config), cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file(config, name).write_text(json.dumps({"pid": process.pid, "log": str(log)}))
    return process.pid


def wait_until(
    check: Callable[[], bool], name: str, config: ServiceConfig, pid: int, what: str
) -> None:
    """Poll `check` until it holds; fail early, with the log's tail, if the service dies."""
    deadline = time.monotonic() + config.health_timeout
    while time.monotonic() < deadline:
        if not process_group_alive(pid):
            raise ServiceError(f"{name} exited before {what}:\n{log_tail(config, name)}")
        if check():
            return
        time.sleep(0.5)
    raise ServiceError(
        f"{name} did not become {what} within {config.health_timeout:.0f} s (log: "
        f"{log_file(config, name)}):\n{log_tail(config, name)}"
    )


def log_tail(config: ServiceConfig, name: str, lines: int = 25) -> str:
    path = log_file(config, name)
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def health_url(name: str, config: ServiceConfig) -> str:
    return f"{config.prefect_api_url}/health" if name == PREFECT else f"{config.mlflow_url}/health"


def start_services(
    config: ServiceConfig,
    register: Callable[[ServiceConfig], None],
    echo: Callable[[str], None] = print,
) -> ServiceConfig:
    """Start whatever is not running yet, wait for health, then `register(config)` the
    deployments (the caller brings them: `lmforge.cli.register_flows`), then start the worker.

    Idempotent: services whose pid file names a live process are left alone. Raises ServiceError
    naming the port when one is taken by something else, or with the log's tail when a service
    dies or never answers its health check.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    new_auth = create_prefect_auth(config)
    if new_auth:
        echo(f"Prefect login (the UI asks for it): {new_auth}  -- shown once, kept in "
             f"{config.prefect_auth_file} (owner-only)")
    ports = {PREFECT: config.prefect_port, MLFLOW: config.mlflow_port}
    servers = [name for name in (PREFECT, MLFLOW) if read_pid(config, name) is None]
    for name in servers:
        if not port_is_free(config.host, ports[name]):
            raise ServiceError(
                f"port {ports[name]} on {config.host} is taken, so {name} cannot listen there: "
                f"stop what uses it or pick another port (--{name.split('-')[0]}-port)"
            )
    pids = {name: launch(name, config) for name in servers}
    for name, pid in pids.items():
        wait_until(lambda n=name: answers(health_url(n, config)), name, config, pid, "healthy")
        echo(f"{name}: started (pid {pid}, log {log_file(config, name)})")
    register(config)
    if config.start_worker and read_pid(config, WORKER) is None:
        pid = launch(WORKER, config)
        wait_until(lambda: worker_online(config), WORKER, config, pid, "online in its pool")
        echo(f"{WORKER}: started on pool {config.work_pool!r} (pid {pid})")
    write_env_file(config)
    save_addresses(config)
    return config


def worker_online(config: ServiceConfig) -> bool:
    from prefect.client.orchestration import get_client

    with prefect_client_settings(config):
        with get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(config.work_pool)
    return any(worker.status == "ONLINE" for worker in workers)


def save_addresses(config: ServiceConfig) -> None:
    """Remember host, ports and pool, so `status` and `down` need only the state directory."""
    addresses = {"host": config.host, "prefect_port": config.prefect_port,
                 "mlflow_port": config.mlflow_port, "work_pool": config.work_pool}
    (config.state_dir / "services.json").write_text(json.dumps(addresses, indent=2))


def load_config(state_dir: str | Path, **overrides) -> ServiceConfig:
    """The configuration `up` used for `state_dir` (defaults if it never ran), with overrides."""
    state_dir = Path(state_dir)
    saved = state_dir / "services.json"
    addresses = json.loads(saved.read_text()) if saved.is_file() else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    return ServiceConfig(state_dir=state_dir, **{**addresses, **given})


def write_env_file(config: ServiceConfig) -> Path:
    """`<state>/env`: `source` it to point a shell's flows at these servers."""
    path = config.state_dir / "env"
    path.write_text("".join(f"{line}\n" for line in shell_exports(config)))
    return path


def stop_services(config: ServiceConfig, timeout: float = 20.0) -> list[str]:
    """Stop every running service (SIGTERM to its process group, SIGKILL after `timeout`).

    Idempotent: nothing running is not an error. Returns the names of the services it stopped.
    """
    stopped = []
    for name in reversed(SERVICES):
        pid = read_pid(config, name)
        if pid is not None:
            stop_group(pid, timeout)
            stopped.append(name)
        pid_file(config, name).unlink(missing_ok=True)
    return stopped


def stop_group(pid: int, timeout: float) -> None:
    if not stop_process_group(pid, signal.SIGTERM, timeout):
        raise ServiceError(f"process group {pid} survived SIGKILL")


def service_status(config: ServiceConfig) -> dict[str, dict]:
    """Per service: running (pid), healthy (answers its health check or is online) and URL."""
    status = {}
    for name in SERVICES:
        pid = read_pid(config, name)
        if name == WORKER:
            server_up = answers(health_url(PREFECT, config))
            healthy = pid is not None and server_up and worker_online(config)
            url = f"pool {config.work_pool}"
        else:
            healthy = pid is not None and answers(health_url(name, config))
            url = config.prefect_url if name == PREFECT else config.mlflow_url
        status[name] = {"pid": pid, "running": pid is not None, "healthy": healthy, "url": url}
    return status


# --- the Prefect API of one command ----------------------------------------------------------

# What a command's processes need to reach the API served in the command's own process.
COMMAND_API_ENV = ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")


@contextlib.contextmanager
def command_prefect_api(startup_timeout: float) -> Iterator[str]:
    """The Prefect API that a command's flows, and every process they start, talk to; yields
    its URL. The server PREFECT_API_URL names when it is set; else the API served from a
    thread of this process until the block ends.

    Not Prefect's own temporary server: that is a uvicorn subprocess per process that needs an
    API (the command, and each worker of a process pool: three servers on two cores), each
    given 20 s to answer (busy machines fail), each hit by the terminal's Ctrl-C together with
    the command (whose last reports then meet a dead server), and left running when the
    command is killed. A thread has none of this: it dies with the process, and stops only
    after the command's last report. Child processes inherit its address, and
    PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false makes any that lacks it fail rather than start a
    server of its own. No UI address is set: links to this API would outlive it.

    Raises ServiceError when the API fails to start, or has not answered within
    `startup_timeout` seconds.
    """
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    import threading

    import prefect.context
    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_ENABLED, PREFECT_UI_URL
    from prefect.settings import temporary_settings

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # a free port, held from now on: no race for it
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    updates = {PREFECT_API_URL: url, PREFECT_UI_URL: "", PREFECT_SERVER_EPHEMERAL_ENABLED: False}
    # For child processes (the environment), other threads and contexts (the global settings)
    # and this one (temporary settings), each restored afterwards.
    saved_env = {key: os.environ.get(key) for key in COMMAND_API_ENV}
    os.environ.update(
        PREFECT_API_URL=url, PREFECT_UI_URL="", PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="false"
    )
    saved_global = prefect.context.GLOBAL_SETTINGS_CONTEXT
    current = prefect.context.get_settings_context()
    prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.SettingsContext(
        profile=current.profile, settings=current.settings.copy_with_update(updates=updates)
    )
    # log_config=None: uvicorn would otherwise replace the logging setup of the whole process.
    config = uvicorn.Config(
        create_app(ephemeral=True, final=True), log_config=None, log_level="error",
        lifespan="on", timeout_graceful_shutdown=2,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="prefect-api", daemon=True
    )
    try:
        with temporary_settings(updates=updates):
            thread.start()
            wait_for_command_api(server, thread, startup_timeout)
            try:
                yield url
            finally:
                flush_prefect_clients()
    finally:
        server.should_exit = True
        if thread.is_alive():
            thread.join(timeout=5)
        listener.close()
        prefect.context.GLOBAL_SETTINGS_CONTEXT = saved_global
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def wait_for_command_api(server, thread, timeout: float) -> None:
    """Wait until the API thread has started serving (its database migrated); ServiceError
    when the thread ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise ServiceError(
                "the Prefect API of this command could not start (see the error above): check "
                "PREFECT_HOME's database, or set PREFECT_API_URL to a running server (`lmforge up`)"
            )
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"the temporary Prefect server this command starts did not answer within "
                f"{timeout:g} s: start a lasting one with `lmforge up` and export the "
                "PREFECT_API_URL it prints, or allow more time with "
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
            )
        time.sleep(0.05)


def flush_prefect_clients(timeout: float = 5.0) -> None:
    """Send the logs and events Prefect still holds, before the API they go to stops (else each
    is a ConnectError printed at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)
