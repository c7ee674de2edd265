"""Prefect artifacts: what a person sees on a flow run's page in the UI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext


def _in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def publish_table(key: str, rows: Sequence[dict[str, Any]], description: str) -> None:
    if _in_flow_run() and rows:
        create_table_artifact(table=list(rows), key=key, description=description)


def publish_markdown(key: str, markdown: str) -> None:
    if _in_flow_run():
        create_markdown_artifact(markdown=markdown, key=key)


# MLflow 3.17's UI shows an experiment in its GenAI view unless the address (or the browser's
# last choice) asks for the classic one, whatever the experiment's kind tag says.
CLASSIC_ML_VIEW = "workflowType=machine_learning"


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, in its classic ML view, when the tracking store is a
    server (None otherwise)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    base = tracking_uri.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{CLASSIC_ML_VIEW}"


def mlflow_run_markdown(
    tracking_uri: str, experiment_id: str, run_id: str, run_name: str | None = None
) -> str:
    """A markdown link to the run (its name, else the start of its id), or where a local store
    keeps it and how to browse it: a file store has no address to link to."""
    url = mlflow_run_url(tracking_uri, experiment_id, run_id)
    if url:
        return f"[{run_name or run_id[:8]}]({url})"
    return (
        f"run `{run_id}` in the local store `{tracking_uri}` (no MLflow server to link to: "
        f"browse it with `mlflow ui --backend-store-uri {tracking_uri}`)"
    )


def publish_mlflow_run(
    stage: str, tracking_uri: str, experiment_id: str, run_id: str, run_name: str
) -> None:
    """The flow run's `<stage>-mlflow-run` artifact: a link to the stage's MLflow run on a
    server, else where the local store keeps it (`mlflow_run_markdown`)."""
    link = mlflow_run_markdown(tracking_uri, experiment_id, run_id, run_name)
    publish_markdown(f"{stage.replace('_', '-')}-mlflow-run", f"MLflow run: {link}")


def rename_flow_run(name: str) -> None:
    """Rename the running flow run, once the run learnt what its name should say (outside a
    flow run: nothing to rename)."""
    context = FlowRunContext.get()
    if context is not None:
        with get_client(sync_client=True) as client:
            client.set_flow_run_name(context.flow_run.id, name)


def publish_link(key: str, link: str, description: str) -> None:
    if _in_flow_run():
        create_link_artifact(key=key, link=link, description=description)
