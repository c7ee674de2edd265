"""The MLflow Model Registry: a trained checkpoint becomes a registered model version.

The model is logged with `mlflow.pytorch` in the pickle-free "pt2" format (the forward pass,
exported with `torch.export`: token ids [batch, max_seq_len] -> next-token logits), with the
tokenizer and the checkpoint's manifest as extra files, so `mlflow.pytorch.load_model` gives a
module that scores text without lmforge. Each new version is tagged with the checkpoint path,
its manifest digest and the training run, and the alias (default `candidate`) moves to it.

An evaluation's scores reach a version twice over (`record_evaluation`): as version tags
(`val_bpb` = `2.4868...`, shown on the registry's version page) and as metrics of the version's
LoggedModel (MLflow 3's model entity: compared across versions on the experiment's Models tab).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from lmforge.manifest import MANIFEST_NAME, manifest_digest
from lmforge.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.tracking_tags import (
    CHECKPOINT_DIGEST_TAG,
    CHECKPOINT_TAG,
    EVAL_RUN_ID_TAG,
    TRAINING_RUN_ID_TAG,
)

CANDIDATE_ALIAS = "candidate"
# Where a registered version's checkpoint files live in its training run's artifacts.
CHECKPOINT_ARTIFACTS = "checkpoint"
CHECKPOINT_FILES = (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, MANIFEST_NAME)


def default_registered_name(preset: str) -> str:
    return f"lmforge-{preset}"


def example_ids(max_len: int, pad_id: int | None = None) -> np.ndarray:
    """Two rows of `<|endoftext|>` (id 0), right-padded with `pad_id` if given: two rows keep the
    exported batch size free (an example of one row would fix it at 1)."""
    example = np.zeros((2, max_len), dtype=np.int64)
    if pad_id is not None:
        example[:, max(1, max_len // 2) :] = pad_id
    return example


def log_pt2_model(
    model: torch.nn.Module,
    example: np.ndarray,
    name: str,
    registered_name: str | None = None,
    extra_files: list[str] | None = None,
):
    """Log `model` to the active run as a pickle-free pt2 MLflow model (its forward pass exported
    for `example`'s shape); register it as a new version of `registered_name` when set."""
    requirements = [f"torch>={torch.__version__.split('+')[0]}"]  # all a pt2 graph needs to load
    return mlflow.pytorch.log_model(
        model.cpu().eval(),
        name=name,
        input_example=example,
        serialization_format="pt2",
        pip_requirements=requirements,
        extra_files=extra_files or None,
        registered_model_name=registered_name or None,
    )


def register_checkpoint(
    checkpoint_dir: str | Path, registered_name: str, alias: str | None = CANDIDATE_ALIAS
) -> ModelVersion:
    """Log the model in `checkpoint_dir` (a finished training output) to the active MLflow run
    and register it as a new version of `registered_name`; `alias` then points at that version.

    Raises ManifestError when the checkpoint has no manifest (an unfinished training run).
    """
    checkpoint_dir = Path(checkpoint_dir).resolve()
    digest = manifest_digest(checkpoint_dir)
    model = load_model(checkpoint_dir).eval()
    # lmforge's own files too, so the version outlives its folder: `version_checkpoint` loads
    # it, training continues from it, `lmforge lineage` checks it.
    for name in CHECKPOINT_FILES:
        if (checkpoint_dir / name).is_file():
            mlflow.log_artifact(str(checkpoint_dir / name), artifact_path=CHECKPOINT_ARTIFACTS)
    extra_files = [
        str(path)
        for path in (checkpoint_dir / TOKENIZER_FILE, checkpoint_dir / MANIFEST_NAME)
        if path.is_file()
    ]
    info = log_pt2_model(
        model, example_ids(model.config.max_seq_len), "model", registered_name, extra_files
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    tags = {
        CHECKPOINT_TAG: str(checkpoint_dir),
        CHECKPOINT_DIGEST_TAG: digest,
        TRAINING_RUN_ID_TAG: mlflow.active_run().info.run_id,
    }
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, version, key, value)
    if alias:
        client.set_registered_model_alias(registered_name, alias, version)
    return client.get_model_version(registered_name, version)


def version_checkpoint(version: ModelVersion, dest: str | Path) -> Path:
    """The checkpoint folder of a registered version, as its training run logged it to MLflow
    (weights, model config, tokenizer, manifest), downloaded into `dest`: loadable with
    `load_model` after its work directory is gone. Checked against the version's manifest
    digest; ValueError when the files are missing or differ."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=CHECKPOINT_ARTIFACTS, dst_path=str(dest)
        )
    )
    recorded = version.tags.get(CHECKPOINT_DIGEST_TAG)
    if not (local / MANIFEST_NAME).is_file() or manifest_digest(local) != recorded:
        raise ValueError(
            f"{version.name} version {version.version}: the checkpoint files in MLflow run "
            f"{version.run_id} do not match the version's manifest digest {recorded}"
        )
    return local


def versions_of_run(run_id: str) -> list[ModelVersion]:
    """The registered model versions logged by run `run_id` (a training run)."""
    return MlflowClient().search_model_versions(f"run_id = '{run_id}'")


def logged_model_id(version: ModelVersion) -> str | None:
    """The LoggedModel a version was registered from: its `model_id`, or the `models:/m-...`
    source MLflow 3 records (its SQL registry leaves `model_id` empty); None for a version
    registered from a run's files."""
    if version.model_id:
        return version.model_id
    found = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")
    return found.group(1) if found else None


def record_evaluation(
    versions: list[ModelVersion], eval_run_id: str, scores: Mapping[str, float]
) -> None:
    """Attach an evaluation to the versions it scored, inside evaluation run `eval_run_id`
    (active, holding the scores already): each version is tagged with the run (EVAL_RUN_ID_TAG)
    and the scores under their metric names (`val_bpb`, full precision), and the scores are
    linked to the versions' LoggedModel, when they share one, so the model's page lists them."""
    client = MlflowClient()
    for version in versions:
        client.set_model_version_tag(version.name, version.version, EVAL_RUN_ID_TAG, eval_run_id)
        for metric, value in scores.items():
            client.set_model_version_tag(version.name, version.version, metric, repr(float(value)))
    model_ids = {logged_model_id(version) for version in versions} - {None}
    if len(model_ids) == 1:
        mlflow.log_metrics(dict(scores), model_id=model_ids.pop())
