"""MLflow lineage for flows: one run per stage, nested under the pipeline's run when there is one.

Each stage run carries the stage's parameters, its numeric counts as metrics (one name per
quantity), its manifest as an artifact, the datasets it read as `mlflow.log_input` entries (with
digests), the machine's CPU, memory (and GPU) use as `system/` metrics, and the Prefect flow run it
belongs to as tags and, where Prefect has a UI, a link in its description — so a model can be
traced back to the WARC files it came from. A stage's Prefect flow run and its MLflow run share
one name (`run_name`: `pretrain tiny 200 steps data-v3`).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
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
from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from lmforge import __version__
from lmforge.errors import LmforgeError
from lmforge.flows.stage_cache import STAGES_DIR
from lmforge.flows.tracking_store import open_sqlite_store, sqlite_path
from lmforge.manifest import (
    MANIFEST_NAME,
    VERSIONS_DIR,
    manifest_version,
    read_manifest,
    sha256_file,
)
from lmforge.tracking_tags import OUTPUT_DIR_TAG, STAGE_TAG, VERSION_TAG

EXPERIMENT_NAME = os.environ.get("LMFORGE_EXPERIMENT", "lmforge")
# MLflow keeps dataset digests in a 36-character column; the full sha256 goes into an input tag.
DIGEST_CHARS = 32
MAX_PARAM_CHARS = 6000
# MLflow 3 shows an experiment of unknown kind as a GenAI one (traces, prompts); lmforge trains
# models, so its experiment says so (the tag older 3.x UIs choose the view by).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # a run's description, rendered as markdown by the MLflow UI
DATA_STAGE = "data_refresh"  # the stage whose counts are a dataset's (`manifest_metrics`)
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
    """Create the `lmforge` experiment unless it exists (first use also creates the store), and
    mark it a model-training experiment unless someone chose its kind already."""
    experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        try:
            mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            pass  # created concurrently by another process (on a server): fine
        experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None and EXPERIMENT_KIND_TAG not in experiment.tags:
        MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML_KIND
        )


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


def flow_run_link(tags: Mapping[str, str]) -> str | None:
    """A markdown link to the Prefect flow run `prefect_tags` names, for the run's description
    (MLflow shows tag values as plain text); None where the flow run has no UI address."""
    url = tags.get("prefect.flow_run_url")
    if not url:
        return None
    return f"Prefect flow run: [{tags.get('prefect.flow_run_name', url)}]({url})"


def system_metrics_enabled() -> bool:
    """Whether stage runs log CPU, memory, disk, network (and GPU) use as `system/` metrics: on,
    unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says false. MLflow samples every 10 s
    (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL); GPUs need the `nvidia-ml-py` package."""
    if MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.defined:
        return MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get()
    return True


@contextlib.contextmanager
def stage_run(
    stage: str, params: Mapping[str, Any], parent_run_id: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage, named `run_name(stage, params)`; a child of `parent_run_id`,
    else of the run `child_runs_of` names, else of the active run, if any. System metrics are
    sampled while it is open (`system_metrics_enabled`). Opened by another stage's flow (the
    pipeline recording a stage it reused), the run describes the output as it is."""
    active = mlflow.active_run()
    parent_run_id = parent_run_id or _parent_run.get()
    parent_run_id = parent_run_id or (active.info.run_id if active else None)
    tags = {STAGE_TAG: stage, VERSION_TAG: __version__, **prefect_tags()}
    link = flow_run_link(tags)
    if link:
        tags[NOTE_TAG] = link
    with mlflow.start_run(
        run_name=run_name(stage, params, reused=_running_flow() not in (None, stage)),
        nested=active is not None,
        parent_run_id=parent_run_id,
        tags=tags,
        log_system_metrics=system_metrics_enabled(),
    ) as run:
        mlflow.log_params(flatten_params(params))
        yield run


def _running_flow() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow.name if context is not None else None


def run_name(stage: str, sections: Mapping[str, Any], *, reused: bool = False) -> str:
    """The name of a stage's Prefect flow run and of its MLflow run: the stage, then what tells
    its runs apart, e.g. `pretrain tiny 200 steps data-v3`, `data_refresh 2 inputs -> data-v4`
    (the version it adds; `reused`: the version its folder holds), `build_shards vocab 8000
    data-v3`, `evaluate tiny 200 steps data-v3`.

    `sections` are the stage's parameter sections (pydantic models or their JSON values);
    `data-v3` is the dataset version the stage reads, found through the manifests' inputs. A
    section that is missing or a folder not written yet leaves its words out: naming a run
    never fails it."""
    values = {
        key: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        for key, value in sections.items()
    }
    try:
        words = _distinguishing_words(stage, values, reused)
    except (LmforgeError, OSError, ValueError, KeyError, TypeError, AttributeError):
        words = []  # a folder or manifest that cannot be read: the stage's name alone
    return " ".join([stage, *(str(word) for word in words if word)])


def _distinguishing_words(stage: str, values: Mapping[str, Any], reused: bool) -> list[Any]:
    model, train, run = (values.get(key) or {} for key in ("model", "train", "run"))
    steps = f"{train['max_steps']} steps" if "max_steps" in train else None
    if stage == DATA_STAGE and run:
        target = dataset_version(run["out"]) if reused else next_dataset_version(run["out"])
        return [refresh_source(run), "->", target]
    if stage == "build_shards":
        vocab = (values.get("shards") or {}).get("vocab_size")
        vocab = f"vocab {vocab}" if vocab else None
        return [vocab, run.get("data") and dataset_version(run["data"])]
    if stage == "pretrain":
        return [model.get("preset"), steps, run.get("shards") and dataset_version(run["shards"])]
    if stage == "evaluate":
        return checkpoint_words(run["checkpoint"]) if run.get("checkpoint") else []
    if stage == "pipeline":
        return [model.get("preset"), steps, run and refresh_source(run)]
    if stage == "retrain":
        return [model.get("preset"), steps, run.get("dataset") and dataset_version(run["dataset"])]
    return [Path(run["out"]).name] if run.get("out") else []


def stage_flow_run_name() -> str:
    """For `@flow(flow_run_name=stage_flow_run_name)`: the running flow's `run_name`, from its
    parameters (defaults filled in); the flow's name is its stage's."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None:
        return "lmforge"
    signature = inspect.signature(context.flow.fn).parameters
    sections = {
        key: context.parameters.get(key, parameter.default)
        for key, parameter in signature.items()
        if key in context.parameters or parameter.default is not inspect.Parameter.empty
    }
    return run_name(context.flow.name, sections)


def refresh_source(run: Mapping[str, Any]) -> str:
    """What a refresh reads, in a word or two: a crawl id, a file (or glob), `N inputs`, or
    `sample` (the built-in corpus)."""
    if run.get("crawl"):
        return run["crawl"] + (f" {run['max_files']} files" if run.get("max_files") else "")
    inputs = run.get("input") or []
    if len(inputs) == 1:
        return Path(inputs[0]).name
    return f"{len(inputs)} inputs" if inputs else "sample"


def next_dataset_version(data_dir: str | Path) -> str:
    """`data-v4`: the version a refresh into `data_dir` adds (v1 into a new folder)."""
    current = manifest_with_digest(data_dir)
    version = manifest_version(current) + 1 if current else 1
    return f"{dataset_name(data_dir)}-v{version}"


def dataset_name(folder: str | Path) -> str:
    """What a dataset folder is called in run names: its name, or for a chain's stage folder
    (`stages/data/<digest>`) the stage's link name (`data`)."""
    folder = Path(folder)
    return folder.parent.name if folder.parent.parent.name == STAGES_DIR else folder.name


def dataset_version(folder: str | Path, digest: str | None = None) -> str | None:
    """`data-v3`: the dataset version `folder` (a data, shards or training output) is, or was
    built from, following its manifest's inputs by the manifest digests they recorded; None
    when the chain cannot be followed (a folder moved, or rebuilt since)."""
    manifest = manifest_with_digest(folder, digest)
    if manifest is None:
        return None
    if manifest.get("stage") == DATA_STAGE:
        return f"{dataset_name(folder)}-v{manifest_version(manifest)}"
    for item in manifest.get("inputs", []):
        if item.get("stage") and item.get("path"):
            found = dataset_version(item["path"], item.get("manifest_sha256"))
            if found:
                return found
    return None


def manifest_with_digest(folder: str | Path, digest: str | None = None) -> dict[str, Any] | None:
    """The manifest of `folder` whose sha256 is `digest`: the current one, or an earlier
    version's (`versions/vNNNNN.json`); the current one when `digest` is None. None when there
    is none, or it cannot be read."""
    folder = Path(folder)
    candidates = [folder / MANIFEST_NAME, *sorted((folder / VERSIONS_DIR).glob("v*.json"))]
    try:
        for path in candidates if digest else candidates[:1]:
            if path.is_file() and (digest is None or sha256_file(path) == digest):
                return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return None


def checkpoint_words(checkpoint: str | Path) -> list[Any]:
    """What a training output was: preset, steps and the dataset version it learned from; an
    unfinished checkpoint folder by its name."""
    manifest = manifest_with_digest(checkpoint)
    if manifest is None:
        return [Path(checkpoint).name]
    preset = ((manifest.get("params") or {}).get("model") or {}).get("preset")
    steps = (manifest.get("counts") or {}).get("steps")
    steps = f"{steps} steps" if steps is not None else None
    return [preset, steps, dataset_version(checkpoint)]


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


def manifest_metrics(manifest: Mapping[str, Any]) -> dict[str, float]:
    """A finished stage's counts as MLflow metrics, one name per quantity: a dataset's are its
    funnel (`data_refresh.dataset_metrics`), any other stage's its counts as `numeric_metrics`
    names (`tokens`, `parameters`, ...)."""
    if manifest.get("stage") == DATA_STAGE:
        from lmforge.flows.data_refresh import dataset_metrics  # the data stage's own names

        return dataset_metrics(manifest)
    return numeric_metrics(manifest.get("counts", {}))


def log_stage_manifest(
    stage_dir: str | Path, context: str = "input", step: int | None = None
) -> dict[str, Any]:
    """Log a finished stage directory: manifest artifact, counts as metrics (`manifest_metrics`,
    at `step`: a training run's last, where they meet its own curves), inputs as datasets."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    mlflow.log_artifact(str(stage_dir / MANIFEST_NAME), artifact_path="manifest")
    mlflow.log_metrics(manifest_metrics(manifest), step=step)
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
