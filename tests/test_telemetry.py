"""Telemetry off everywhere: the files that cannot import `lmforge.telemetry` list the same
variables with the same values, so turning one more off cannot be forgotten in one of them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lmforge.telemetry import TELEMETRY_OFF, turn_off_telemetry

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_env(path: Path) -> dict[str, str]:
    """The NAME=VALUE pairs of a Dockerfile's ENV instructions (continued lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    pairs: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.*)$", text, flags=re.MULTILINE):
        pairs.update(re.findall(r"(\w+)=(\S+)", line))
    return pairs


def telemetry_settings(found: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in found.items() if key in TELEMETRY_OFF}


def test_the_makefile_exports_every_telemetry_setting():
    exports = dict(re.findall(r"^export (\w+) := (\S+)$", (ROOT / "Makefile").read_text(),
                              flags=re.MULTILINE))
    assert telemetry_settings(exports) == TELEMETRY_OFF


def test_docker_compose_quiet_block_is_every_telemetry_setting():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["x-quiet"] == TELEMETRY_OFF


def test_the_worker_image_sets_every_telemetry_setting():
    assert telemetry_settings(dockerfile_env(ROOT / "infra" / "Dockerfile")) == TELEMETRY_OFF


def test_the_mlflow_image_sets_every_setting_but_prefects():
    not_prefect = {k: v for k, v in TELEMETRY_OFF.items() if not k.startswith("PREFECT_")}
    found = telemetry_settings(dockerfile_env(ROOT / "infra" / "mlflow.Dockerfile"))
    assert found == not_prefect


def test_turning_telemetry_off_keeps_a_users_own_setting():
    environ = {"DO_NOT_TRACK": "0"}
    turn_off_telemetry(environ)
    assert environ == {**TELEMETRY_OFF, "DO_NOT_TRACK": "0"}
