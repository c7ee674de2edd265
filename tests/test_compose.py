"""docker-compose.yml cannot run here (no Docker engine): check that it is valid and wired."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_has_an_image_or_a_buildable_dockerfile_and_a_healthcheck_or_dependency():
    services = load_compose()["services"]
    assert {"prefect-server", "mlflow", "worker"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert "healthcheck" in service or "depends_on" in service, name


def test_worker_reaches_servers_by_service_name_and_waits_for_them():
    services = load_compose()["services"]
    worker = services["worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for dependency, condition in worker["depends_on"].items():
        assert dependency in services
        assert condition == {"condition": "service_healthy"}
    assert "mlflow:5000" in services["mlflow"]["command"]  # --allowed-hosts names the service


def test_dockerfile_copies_only_paths_that_exist():
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE):
        for source in sources.split():
            assert (ROOT / source).exists(), source


def test_compose_variables_are_documented_in_env_example():
    variables = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    documented = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert variables <= documented
