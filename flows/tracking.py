"""MLflow lineage for flows: one run per stage, nested under the pipeline's run when there is one.

Each stage run carries the stage's parameters, its numeric counts as metrics, its manifest as an
artifact, the datasets it read as `mlflow.log_input` entries (with digests), and the Prefect flow
run it belongs to as tags — so a model can be traced back to the WARC files it came from.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from lmforge import __version__
from lmforge.flows.tracking_store import open_sqlite_store, sqlite_path
from lmforge.manifest import MANIFEST_NAME, read_manifest
from lmforge.tracking_tags import OUTPUT_DIR_TAG, STAGE_TAG, VERSION_TAG

EXPERIMENT_NAME = os.environ.get("LMFORGE_EXPERIMENT", "lmforge")
# MLflow keeps dataset digests in a 36-character column; the full sha256 goes into an input tag.
DIGEST_CHARS = 32
MAX_PARAM_CHARS = 6000
_configured_uri: str | None = None


def configure_tracking(work_dir: str | Path, *, keep_existing: bool = False) -> str:
    """Point MLflow at `MLFLOW_TRACKING_URI`, or else a SQLite database inside `work_dir`, and
    make sure the `lmforge` experiment exists there.

    `keep_existing` keeps a store chosen earlier in this process (a stage flow called by the
    pipeline logs where the pipeline does). A SQLite store is created and opened by one process
    at a time (commands started together share it); raises TrackingStoreError naming the file
    when it cannot be opened.
    """
    global _configured_uri
    if keep_existing and _configured_uri:
        return _configured_uri
    work_dir = Path(work_dir).resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        work_dir.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{work_dir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    # A local store keeps artifacts beside its database rather than in the caller's cwd.
    location = None if uri.startswith("http") else (work_dir / "mlartifacts").as_uri()
    db = sqlite_path(uri)
    if db is None:
        ensure_experiment(location)
    else:
        open_sqlite_store(db, lambda: ensure_experiment(location))
    mlflow.set_experiment(EXPERIMENT_NAME)
    _configured_uri = uri
    return uri


def ensure_experiment(artifact_location: str | None) -> None:
    """Create the `lmforge` experiment unless it exists (first use also creates the store)."""
    if mlflow.get_experiment_by_name(EXPERIMENT_NAME) is None:
        try:
            mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            pass  # created concurrently by another process (on a server): fine


def prefect_tags() -> dict[str, str]:
    """Tags linking an MLflow run to the Prefect flow run executing it (empty outside a flow).
    The flow run's UI link only where Prefect knows its UI's address (a server; not the
    command line's default, which runs flows without one)."""
    try:
        from prefect.runtime import deployment, flow_run
        from prefect.utilities.urls import url_for
    except ImportError:
        return {}
    tags = {}
    if flow_run.id:
        tags["prefect.flow_run_id"] = str(flow_run.id)
        tags["prefect.flow_run_name"] = str(flow_run.name)
        # Not `flow_run.ui_url`: it formats a missing address as "None/...".
        url = url_for("flow-run", obj_id=flow_run.id)
        if url:
            tags["prefect.flow_run_url"] = url
        if flow_run.root_flow_run_id:
            tags["prefect.root_flow_run_id"] = str(flow_run.root_flow_run_id)
    if deployment.id:
        tags["prefect.deployment_id"] = str(deployment.id)
    return tags


@contextlib.contextmanager
def stage_run(
    stage: str, params: Mapping[str, Any], parent_run_id: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage; a child of `parent_run_id`, else of the run `child_runs_of`
    names, else of the active run, if any."""
    active = mlflow.active_run()
    parent_run_id = parent_run_id or _parent_run.get()
    parent_run_id = parent_run_id or (active.info.run_id if active else None)
    tags = {STAGE_TAG: stage, VERSION_TAG: __version__, **prefect_tags()}
    with mlflow.start_run(
        run_name=stage, nested=active is not None, parent_run_id=parent_run_id, tags=tags
    ) as run:
        mlflow.log_params(flatten_params(params))
        yield run


# The pipeline's MLflow run, for the stage flows it calls: lineage, not a flow parameter.
_parent_run: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lmforge_parent_run", default=None
)


def enclosing_parent_run() -> str | None:
    """The MLflow run `child_runs_of` names here, if any."""
    return _parent_run.get()


@contextlib.contextmanager
def child_runs_of(parent_run_id: str) -> Iterator[None]:
    """Stage runs opened inside the block become children of MLflow run `parent_run_id`."""
    token = _parent_run.set(parent_run_id)
    try:
        yield
    finally:
        _parent_run.reset(token)


def section_values(sections: Mapping[str, BaseModel]) -> dict[str, Any]:
    """A flow's parameter sections as JSON values, e.g. {"data": {...}, "run": {...}}: what the
    stage's MLflow run and manifest record as its resolved configuration."""
    return {name: section.model_dump(mode="json") for name, section in sections.items()}


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            is_list = isinstance(value, (list, tuple))
            text = json.dumps(value, default=str) if is_list else str(value)
            flat[name] = text[:MAX_PARAM_CHARS]
    return flat


def numeric_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers in a (nested) mapping as MLflow metric names like `removed.quality`."""
    metrics: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}".replace(":", ".").replace("=", "_")
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            metrics[name] = float(value)
        elif isinstance(value, Mapping):
            metrics.update(numeric_metrics(value, prefix=f"{name}."))
    return metrics


def log_stage_manifest(stage_dir: str | Path, context: str = "input") -> dict[str, Any]:
    """Log a finished stage directory: manifest artifact, counts as metrics, inputs as datasets."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    mlflow.log_artifact(str(stage_dir / MANIFEST_NAME), artifact_path="manifest")
    mlflow.log_metrics(numeric_metrics(manifest.get("counts", {})))
    for item in manifest.get("inputs", []):
        log_dataset_input(item, context=context)
    mlflow.set_tag(OUTPUT_DIR_TAG, str(stage_dir.resolve()))
    return manifest


def log_dataset_input(item: Mapping[str, Any], context: str) -> None:
    """One manifest input (a file with sha256, or a stage directory with its manifest's sha256)."""
    digest = item.get("sha256") or item.get("manifest_sha256")
    path = item["path"]
    with warnings.catch_warnings():
        # Local paths match two equivalent source classes; MLflow warns and picks one.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(Path(path).as_uri() if "://" not in path else path)
    name = item.get("stage") or Path(path).name
    short_digest = digest[:DIGEST_CHARS] if digest else None
    dataset = MetaDataset(source=source, name=name, digest=short_digest)
    tags = {"sha256": digest} if digest else {}
    mlflow.log_input(dataset, context=context, tags=tags)


class MetricsLogger:
    """Forwards training metrics to a given run from any thread (the fluent API is thread-local),
    keeps them for the curves plotted at the end, and tells `on_step` (e.g. a progress
    artifact) each step that was logged."""

    def __init__(self, run_id: str, on_step: Callable[[int], None] | None = None) -> None:
        self.run_id = run_id
        self.client = MlflowClient()
        self.history: list[dict[str, float]] = []
        self.on_step = on_step

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        self.history.append({"step": step, **metrics})
        timestamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)
        if self.on_step is not None:
            self.on_step(step)
