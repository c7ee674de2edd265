"""Prefect artifacts: what a person sees on a flow run's page in the UI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.context import FlowRunContext


def _in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def publish_table(key: str, rows: Sequence[dict[str, Any]], description: str) -> None:
    if _in_flow_run() and rows:
        create_table_artifact(table=list(rows), key=key, description=description)


def publish_markdown(key: str, markdown: str) -> None:
    if _in_flow_run():
        create_markdown_artifact(markdown=markdown, key=key)


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, when the tracking store is a server (None otherwise)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_run_markdown(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A markdown link to the run, or its id and how to browse a local store."""
    url = mlflow_run_url(tracking_uri, experiment_id, run_id)
    if url:
        return f"[{run_id[:8]}]({url})"
    return f"`{run_id}` (`mlflow ui --backend-store-uri {tracking_uri}`)"


def publish_link(key: str, link: str, description: str) -> None:
    if _in_flow_run():
        create_link_artifact(key=key, link=link, description=description)
