"""Telemetry off: the environment that stops Prefect and MLflow from calling home.

lmforge runs offline (there may be no network at all), so every process it starts, and the CLI
itself, sets these. The Makefile, docker-compose.yml and the images in infra/ cannot import
Python and list the same variables; tests/test_telemetry.py keeps them in step.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TELEMETRY_OFF: dict[str, str] = {
    "DO_NOT_TRACK": "1",  # the cross-tool convention; Prefect and MLflow both honour it
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def turn_off_telemetry(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each TELEMETRY_OFF variable in `environ` that is not set already (a user's own
    choice wins)."""
    for key, value in TELEMETRY_OFF.items():
        environ.setdefault(key, value)
