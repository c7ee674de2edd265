"""`lmforge lineage`: from a registered model version back to the WARC files it was built from.

The chain follows explicit links only: the version's source run is the training run (its tags
name the checkpoint and its manifest digest); evaluation runs carry `lmforge.training_run_id`;
the training run carries `lmforge.shards` and the shards manifest digest; every manifest lists
its inputs with digests; each stage's run is the one tagged with its `lmforge.output_dir`.
Digests recorded in MLflow are checked against the manifests on disk, so a rebuilt stage shows.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lmforge.errors import LmforgeError
from lmforge.manifest import (
    MANIFEST_NAME,
    ManifestError,
    manifest_digest,
    read_manifest,
    sha256_file,
)
from lmforge.tracking_tags import (
    CHECKPOINT_DIGEST_TAG,
    CHECKPOINT_TAG,
    EVAL_RUN_ID_TAG,
    OUTPUT_DIR_TAG,
    SHARDS_DIGEST_TAG,
    SHARDS_TAG,
    TRAINING_RUN_ID_TAG,
    find_stage_run,
    stage_runs_of,
)

# The text view shows these filter statistics; --json has every one.
HEADLINE_DATA_COUNTS = ("warc_files", "responses", "kept", "removed", "read_errors")
# The pretrain run's MLflow params are `section.field`; lineage shows them by field name.
TRAINING_PARAMS = ("model.preset", "train.max_steps", "train.batch_size", "train.seq_len",
                   "train.lr", "train.seed", "train.strategy")  # fmt: skip
TRAINING_METRICS = ("final_train_loss", "final_val_loss", "tokens", "parameters")
# MLflow stores every metric as a float; these training counts are whole numbers.
TRAINING_COUNTS = ("tokens", "parameters")


class LineageError(LmforgeError, ValueError):
    """A model that is not registered, or a link in the chain that cannot be followed."""


def parse_model_spec(spec: str) -> tuple[str, str | None, str | None]:
    """`NAME`, `NAME:VERSION` or `NAME@ALIAS` -> (name, version, alias)."""
    if "@" in spec:
        name, _, alias = spec.partition("@")
        return name, None, alias
    name, sep, version = spec.rpartition(":")
    if sep and version.isdigit():
        return name, version, None
    return spec, None, None


def resolve_version(client: MlflowClient, spec: str) -> ModelVersion:
    """The model version `spec` names; the newest version for a bare name."""
    name, version, alias = parse_model_spec(spec)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as error:
        raise LineageError(f"{spec} is not in the Model Registry ({error.message})") from error
    if not versions:
        raise LineageError(f"no registered model is called {name!r}")
    return max(versions, key=lambda v: int(v.version))


def digest_check(path: str | None, recorded: str | None) -> dict[str, Any]:
    """The manifest digest recorded in MLflow, whether the manifest on disk still has it, and
    whether the folder is gone (deleted by `lmforge clean`, or with its work directory)."""
    entry: dict[str, Any] = {"path": path, "manifest_sha256": recorded}
    try:
        entry["manifest_matches"] = bool(path) and manifest_digest(path) == recorded
        entry["deleted"] = False
    except OSError:
        entry["manifest_matches"] = False  # moved or deleted since it was recorded
        entry["deleted"] = not (path and Path(path).exists())
    return entry


def recorded_manifest(path: str, digest: str | None) -> dict[str, Any]:
    """The manifest with sha256 `digest` of the stage output `path`: the one on disk when it
    still is that one, else the copy its stage run logged to MLflow (the folder deleted, or a
    dataset a later refresh added versions to). LineageError when neither is found."""
    try:
        if digest is None or manifest_digest(path) == digest:
            return read_manifest(path)
    except (ManifestError, OSError):
        pass
    for run in stage_runs_of(path):
        with tempfile.TemporaryDirectory(prefix="lmforge-lineage-") as scratch:
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id, artifact_path=f"manifest/{MANIFEST_NAME}",
                    dst_path=scratch,
                )  # fmt: skip
            except (MlflowException, OSError):
                continue
            if digest is None or sha256_file(local) == digest:
                return json.loads(Path(local).read_text())
    raise LineageError(
        f"the manifest recorded in MLflow for {path} is neither on disk nor in MLflow"
    )


def stage_input(manifest: dict[str, Any], stage: str) -> dict[str, Any] | None:
    return next((i for i in manifest.get("inputs", []) if i.get("stage") == stage), None)


def trained_strategy(params: Mapping[str, str]) -> str:
    """The parallelism strategy a pretrain run trained with, from its MLflow params: the one
    configured, else (`train.strategy` logged as "None") the trainer's documented default for its
    processes (`run.nproc` x `run.nnodes`): single for one, ddp for several."""
    configured = params.get("train.strategy", "None")
    if configured != "None":
        return configured
    processes = int(params.get("run.nproc", "1")) * int(params.get("run.nnodes", "1"))
    return "single" if processes == 1 else "ddp"


def training_params(params: Mapping[str, str], manifest: dict[str, Any] | None) -> dict[str, str]:
    """TRAINING_PARAMS by field name, the unset ones (logged as "None") as the run resolved
    them: the strategy (`trained_strategy`), seq_len (the model's context, from the training
    `manifest`). One that cannot be resolved is left out, never shown as None."""
    shown = {}
    for key in TRAINING_PARAMS:
        value = params.get(key)
        if key == "train.strategy" and value is not None:
            value = trained_strategy(params)
        elif key == "train.seq_len" and value == "None" and manifest:
            value = str(manifest.get("model_config", {}).get("max_seq_len"))
        if value not in (None, "None"):
            shown[key.split(".")[-1]] = value
    return shown


def evaluation_of(client: MlflowClient, version: ModelVersion, training_run_id: str) -> dict | None:
    """The evaluation run linked from the version's tag, else the newest one of its training run."""
    run_id = version.tags.get(EVAL_RUN_ID_TAG)
    if run_id:
        run = client.get_run(run_id)
    else:
        runs = client.search_runs(
            [client.get_run(training_run_id).info.experiment_id],
            filter_string=f"tags.`{TRAINING_RUN_ID_TAG}` = '{training_run_id}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            return None
        run = runs[0]
    return {"run_id": run.info.run_id, "scores": dict(sorted(run.data.metrics.items()))}


def build_lineage(spec: str) -> dict[str, Any]:
    """The lineage of model version `spec` in the current MLflow store, as a dict with the keys
    model, evaluation, training, shards, data and inputs. Raises LineageError when the model
    is not registered or was not logged by an lmforge training run."""
    client = MlflowClient()
    version = resolve_version(client, spec)
    model = {
        "name": version.name,
        "version": str(version.version),
        "aliases": list(version.aliases),
        "run_id": version.run_id,
    }
    training_run_id = version.tags.get(TRAINING_RUN_ID_TAG) or version.run_id
    if not training_run_id:
        raise LineageError(f"{spec} was not logged by a training run: it has no source run")
    training_run = client.get_run(training_run_id)
    tags = training_run.data.tags
    checkpoint = version.tags.get(CHECKPOINT_TAG) or tags.get(OUTPUT_DIR_TAG)
    metrics = training_run.data.metrics
    training = {
        "run_id": training_run_id,
        "params": training_params(training_run.data.params, readable_manifest(checkpoint)),
        "metrics": {k: int(metrics[k]) if k in TRAINING_COUNTS else metrics[k]
                    for k in TRAINING_METRICS if k in metrics},  # fmt: skip
        "checkpoint": digest_check(
            checkpoint, version.tags.get(CHECKPOINT_DIGEST_TAG)
        ),
    }
    lineage: dict[str, Any] = {
        "model": model,
        "evaluation": evaluation_of(client, version, training_run_id),
        "training": training,
    }
    shards_path = tags.get(SHARDS_TAG)
    if not shards_path:
        raise LineageError(f"training run {training_run_id} has no {SHARDS_TAG} tag")
    shards = digest_check(shards_path, tags.get(SHARDS_DIGEST_TAG))
    shards_manifest = recorded_manifest(shards_path, tags.get(SHARDS_DIGEST_TAG))
    shards_run = find_stage_run(shards_path)
    shards.update(
        run_id=shards_run.info.run_id if shards_run else None,
        tokenizer=shards_manifest.get("tokenizer", {}),
        splits=shards_manifest.get("splits", {}),
    )
    lineage["shards"] = shards
    data_input = stage_input(shards_manifest, "data_refresh")
    if data_input is None:
        raise LineageError(f"the shards manifest in {shards_path} names no data_refresh input")
    data = digest_check(data_input["path"], data_input.get("manifest_sha256"))
    data_manifest = recorded_manifest(data_input["path"], data_input.get("manifest_sha256"))
    data_run = find_stage_run(data_input["path"])
    counts = data_manifest.get("counts", {})
    # The headline counts as the data run logged them; removals by step and documents by
    # language from the manifest (the run logs them per step and per language, by other names).
    statistics = {k: v for k, v in (data_run.data.metrics.items() if data_run else ())
                  if k in HEADLINE_DATA_COUNTS}  # fmt: skip
    statistics.update({f"removed_by_stage.{k}": v
                       for k, v in counts.get("removed_by_stage", {}).items()})  # fmt: skip
    statistics.update({f"languages.{k}": v for k, v in counts.get("languages", {}).items()})
    data.update(
        run_id=data_run.info.run_id if data_run else None,
        filter_statistics=dict(sorted(statistics.items())),
    )
    lineage["data"] = data
    lineage["inputs"] = [
        {k: item.get(k) for k in ("path", "sha256", "bytes")}
        for item in data_manifest.get("inputs", [])
    ]
    return lineage


def readable_manifest(path: str | None) -> dict[str, Any] | None:
    """The manifest in `path`, or None when there is none to read (moved, deleted, unfinished):
    for details the lineage can do without."""
    try:
        return read_manifest(path) if path else None
    except (ManifestError, OSError):
        return None


def short(digest: str | None) -> str:
    return (digest or "?")[:12]


def number(value: float) -> str:
    """A metric for reading: whole numbers (counts, however MLflow stored them) in full with
    thousands separators, never as 1.11526e+06; others in the shortest form."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:g}"


def checked(entry: dict[str, Any]) -> str:
    if entry.get("deleted"):
        state = "folder deleted; manifest read from MLflow"
    elif entry["manifest_matches"]:
        state = "matches the manifest"
    else:
        state = "DIFFERS from the manifest"
    return f"{entry['path']}  (manifest sha256 {short(entry['manifest_sha256'])}…, {state})"


def format_lineage(lineage: dict[str, Any]) -> str:
    """The lineage as indented text, model first, WARC files last."""
    model, training = lineage["model"], lineage["training"]
    aliases = f" @{', @'.join(model['aliases'])}" if model["aliases"] else ""
    lines = [f"model       {model['name']} version {model['version']}{aliases}"]
    evaluation = lineage["evaluation"]
    if evaluation:
        lines.append(f"evaluation  run {evaluation['run_id']}")
        lines += [f"              {k} = {v:.4f}" for k, v in evaluation["scores"].items()]
    else:
        lines.append("evaluation  (none recorded for this training run)")
    lines.append(f"training    run {training['run_id']}")
    lines.append("              " + ", ".join(f"{k}={v}" for k, v in training["params"].items()))
    if training["metrics"]:
        metrics = training["metrics"].items()
        lines.append("              " + ", ".join(f"{k}={number(v)}" for k, v in metrics))
    lines.append(f"  checkpoint  {checked(training['checkpoint'])}")
    shards = lineage["shards"]
    lines.append(f"shards      {checked(shards)}")
    lines.append(f"              run {shards['run_id']}")
    tokenizer = shards.get("tokenizer", {})
    lines.append(
        f"  tokenizer   sha256 {short(tokenizer.get('sha256'))}…, "
        f"vocab {tokenizer.get('vocab_size')}"
    )
    for split, counts in shards.get("splits", {}).items():
        sizes = (f"{counts.get(k)} {k}" for k in ("documents", "tokens", "bytes"))
        lines.append(f"  {split:<10}  " + ", ".join(sizes))
    data = lineage["data"]
    lines.append(f"data        {checked(data)}")
    lines.append(f"              run {data['run_id']}")
    lines += [
        f"              {k} = {number(v)}"
        for k, v in data["filter_statistics"].items()
        if k in HEADLINE_DATA_COUNTS or k.startswith(("removed_by_stage.", "languages."))
    ]
    lines.append(f"inputs      {len(lineage['inputs'])} WARC files")
    lines += [
        f"  {Path(i['path']).name}  sha256 {short(i['sha256'])}…  {i['bytes']} bytes  {i['path']}"
        for i in lineage["inputs"]
    ]
    return "\n".join(lines)


def use_tracking_uri(uri: str | None) -> str:
    """Point MLflow at `uri`, else MLFLOW_TRACKING_URI, else `lmforge run`'s default store."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        default = Path("work/pipeline/mlflow.db").resolve()
        if not default.is_file():
            raise LineageError(
                "no MLflow store: pass --tracking-uri (e.g. sqlite:///work/pipeline/mlflow.db) "
                "or set MLFLOW_TRACKING_URI"
            )
        uri = f"sqlite:///{default}"
    mlflow.set_tracking_uri(uri)
    return uri
