"""`retrain`: the model side of a refresh — shards of the dataset's newest version, pretraining,
evaluation, then the promotion gate — into folders no later run writes.

A `data_refresh` that adds documents emits `lmforge.dataset.updated`; the `retrain` deployment's
trigger (`lmforge deploy --dataset DIR`) starts this flow on it, through Prefect's automations.
Every stage is reused when its finished output matches (`stage_outputs.StageChain`): a retrain
of an unchanged dataset trains nothing and gates nothing. `start=champion` continues from the
current `@champion` (its weights and its tokenizer, fetched from MLflow) instead of from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lmforge.errors import LmforgeError
from lmforge.flows.build_shards import build_shards
from lmforge.flows.evaluate import evaluate
from lmforge.flows.params import EvalRun, PretrainRun, RetrainRun, ShardsRun
from lmforge.flows.pretrain import pretrain
from lmforge.flows.promotion import Decision, GateConfig, current_champion, gate_new_version
from lmforge.flows.registry import default_registered_name, version_checkpoint
from lmforge.flows.reports import publish_markdown
from lmforge.flows.stage_cache import code_version
from lmforge.flows.stage_flow import StageFlow
from lmforge.flows.stage_outputs import StageChain
from lmforge.flows.tracking import configure_tracking, stage_flow_run_name
from lmforge.manifest import describe_input, manifest_version, read_manifest
from lmforge.model.config import ModelSpec
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.model.train import TrainConfig
from lmforge.tasks.data.dataset_writer import STAGE_NAME as DATA_STAGE
from lmforge.tasks.evaluate.checkpoint import EvalConfig
from lmforge.tasks.tokens.shards import ShardConfig
from lmforge.tracking_tags import CHECKPOINT_TAG, CODE_VERSION_TAG, GATE_OUTCOME_TAG

STAGE = "retrain"


class RetrainError(LmforgeError, ValueError):
    """A retrain that cannot start: no champion to continue from, no registered version."""


def champion_start(registered_name: str, work: Path) -> tuple[str, Path]:
    """The current @champion's version and its checkpoint, fetched from MLflow into
    `work/champion/vN` (its folder may be long gone)."""
    champion = current_champion(MlflowClient(), registered_name)
    if champion is None:
        raise RetrainError(
            f"start=champion, but {registered_name} has no @champion yet: retrain from scratch "
            "first (start=scratch), or promote a version with `lmforge promote`"
        )
    folder = work / "champion" / f"v{champion.version}"
    return champion.version, version_checkpoint(champion, folder)


def registered_version(registered_name: str, checkpoint: Path) -> ModelVersion:
    """The version of `registered_name` registered from training output `checkpoint`."""
    for version in MlflowClient().search_model_versions(f"name = '{registered_name}'"):
        if version.tags.get(CHECKPOINT_TAG) == str(checkpoint):
            return version
    raise RetrainError(f"no version of {registered_name} was registered from {checkpoint}")


@task(name="promotion-gate", cache_policy=NO_CACHE, persist_result=False)
def gate_task(
    version: ModelVersion, checkpoint: Path, dataset: Path, gate: GateConfig, shards: ShardConfig,
    evaluation: EvalConfig, work: Path,
) -> Decision | None:  # fmt: skip
    """Gate a version once: a rerun that reuses a gated version leaves its decision as it is
    (None)."""
    if version.tags.get(GATE_OUTCOME_TAG):
        print(f"version {version.version} was gated before: {version.tags[GATE_OUTCOME_TAG]}")
        return None
    return gate_new_version(
        version.name, version.version, checkpoint, dataset, gate, work / "gate",
        val_fraction=shards.val_fraction, evaluation=evaluation,
    )  # fmt: skip


@flow(name=STAGE, flow_run_name=stage_flow_run_name, log_prints=True)
def retrain(
    shards: ShardConfig = ShardConfig(),
    model: ModelSpec = ModelSpec(),
    train: TrainConfig = TrainConfig(),
    eval: EvalConfig = EvalConfig(),
    gate: GateConfig = GateConfig(),
    run: RetrainRun = RetrainRun(),
) -> dict[str, Any]:
    """build_shards -> pretrain -> evaluate -> promotion gate on the dataset's newest version.

    `shards`, `model`, `train` and `eval` are the stages' settings, `gate` how the new version
    is judged against the champion, `run` what is read, where it goes and how it starts."""
    dataset = Path(run.dataset).resolve()
    data_manifest = read_manifest(dataset, DATA_STAGE)
    work = Path(run.work_dir).resolve()
    # The refresh's store (beside the dataset) unless a server is configured: one lineage.
    tracking_uri = configure_tracking(dataset.parent, keep_existing=True)
    name = run.registered_model_name or default_registered_name(model.preset)
    sections = {"shards": shards, "model": model, "train": train, "eval": eval, "gate": gate,
                "run": run}  # fmt: skip
    stage = StageFlow.start(STAGE, sections, work)
    with stage.mlflow_run(tags={CODE_VERSION_TAG: code_version()}) as mlflow_run:
        stage.record_config()
        started_from = "scratch"
        if run.start == "champion":
            version, champion = champion_start(name, work)
            shards = shards.model_copy(update={"tokenizer_path": str(champion / TOKENIZER_FILE)})
            train = train.model_copy(update={"init_from": str(champion)})
            started_from = f"{name} version {version} (@champion)"
        # Rerunning into the same work dir continues (or reuses) the training run.
        train = train.model_copy(update={"resume": True})
        chain = StageChain(work, mlflow_run.info.run_id)
        shards_dir = chain.run(
            "build_shards", build_shards,
            {"shards": shards, "run": ShardsRun(data=str(dataset), out=str(work / "shards"))},
            [describe_input(dataset)], "shards",
        )  # fmt: skip
        train_run = PretrainRun(
            shards=str(shards_dir), out=str(work / "train"), nproc=run.nproc,
            registered_model_name=name, model_alias=None,
        )  # fmt: skip
        train_dir = chain.run(
            "pretrain", pretrain, {"model": model, "train": train, "run": train_run},
            [describe_input(shards_dir)], "train",
        )  # fmt: skip
        eval_run = EvalRun(
            checkpoint=str(train_dir), shards=str(shards_dir), out=str(work / "eval"),
            blimp=run.blimp,
        )  # fmt: skip
        eval_dir = chain.run(
            "evaluate", evaluate, {"eval": eval, "run": eval_run},
            [describe_input(train_dir), describe_input(shards_dir)], "eval",
        )  # fmt: skip
        version = registered_version(name, train_dir)
        decision = gate_task(version, train_dir, dataset, gate, shards, eval, work)
        results = json.loads((eval_dir / "results.json").read_text())
        summary = {
            "dataset": str(dataset),
            "dataset_version": manifest_version(data_manifest),
            "started_from": started_from,
            "shards": str(shards_dir),
            "checkpoint": str(train_dir),
            "results": str(eval_dir / "results.json"),
            "registered_model": f"{name}:{version.version}",
            "stages": dict(chain.outcomes),
            "mlflow_tracking_uri": tracking_uri,
            "mlflow_run_id": mlflow_run.info.run_id,
            "val_bpb": results.get("val_bpb"),
        }
        if decision is not None:
            summary.update(outcome=decision.outcome, reason=decision.reason)
            mlflow.set_tag(GATE_OUTCOME_TAG, decision.outcome)
            if decision.candidate_value is not None:
                mlflow.log_metric(f"heldout_{decision.metric}", decision.candidate_value)
        publish_markdown("retrain-summary", summary_markdown(summary))
    print(f"retrain: {summary}")
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """The flow run's summary for people: what was trained on what, and what the gate did."""
    stages = ", ".join(f"{stage} {outcome}" for stage, outcome in summary["stages"].items())
    gate = summary.get("reason") or "gated before (this run reused the trained version)"
    return (
        f"# retrain: {summary['registered_model']}\n\n"
        f"- **dataset**: `{summary['dataset']}` version {summary['dataset_version']}\n"
        f"- **started from**: {summary['started_from']}\n"
        f"- **stages**: {stages}\n"
        f"- **val_bpb** (the dataset's val split): {summary['val_bpb']}\n"
        f"- **gate**: {gate}\n"
    )
