"""Prefect artifacts: what a person sees on a flow run's page in the UI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext


def _in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def publish_table(key: str, rows: Sequence[dict[str, Any]], description: str) -> None:
    if _in_flow_run() and rows:
        create_table_artifact(table=list(rows), key=key, description=description)


def publish_markdown(key: str, markdown: str) -> None:
    if _in_flow_run():
        create_markdown_artifact(markdown=markdown, key=key)
