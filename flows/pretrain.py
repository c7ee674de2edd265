"""`pretrain`: train the transformer on token shards; metrics stream into the stage's MLflow run."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from uuid import UUID

import mlflow
from prefect import flow, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext

from lmforge.flows.params import TrainParams
from lmforge.flows.registry import default_registered_name, register_checkpoint
from lmforge.flows.reports import mlflow_run_markdown, publish_markdown
from lmforge.flows.tracking import (
    MetricsLogger,
    configure_tracking,
    log_stage_manifest,
    stage_run,
)
from lmforge.model.train import TrainConfig, TrainResult
from lmforge.tasks import plots
from lmforge.tasks.pretrain import TorchrunOptions, run_pretraining

log = logging.getLogger(__name__)


def train_config(params: TrainParams) -> TrainConfig:
    return TrainConfig(
        shards_dir=params.shards,
        out_dir=params.out,
        preset=params.preset,
        max_steps=params.max_steps,
        batch_size=params.batch_size,
        seq_len=params.seq_len,
        lr=params.lr,
        warmup_steps=(
            params.warmup_steps if params.warmup_steps is not None else params.max_steps // 10
        ),
        eval_every=params.eval_every,
        checkpoint_every=params.checkpoint_every,
        seed=params.seed,
        resume=params.resume,
        stop_after=params.stop_after,
        device=params.device,
        strategy=params.strategy or default_strategy(torchrun_options(params)),
        compile=params.compile,
        activation_checkpointing=params.activation_checkpointing,
        grad_accum=params.grad_accum,
        microbatches=params.microbatches,
    )


def tag_shards_input(manifest: dict) -> None:
    """Tag the training run with the shards it read (path and manifest digest), for lineage."""
    for item in manifest.get("inputs", []):
        if item.get("stage") == "build_shards":
            mlflow.set_tag("lmforge.shards", item["path"])
            mlflow.set_tag("lmforge.shards_manifest_sha256", item.get("manifest_sha256", ""))


def default_strategy(launch: TorchrunOptions) -> str:
    return "single" if launch.world_size == 1 else "ddp"


def torchrun_options(params: TrainParams) -> TorchrunOptions:
    return TorchrunOptions(
        nproc=params.nproc,
        nnodes=params.nnodes,
        node_rank=params.node_rank,
        rdzv_endpoint=params.rdzv_endpoint,
    )


PROGRESS_KEY = "pretrain-progress"


def create_training_progress(max_steps: int) -> UUID | None:
    """The flow run's `pretrain-progress` artifact at 0% (None outside a flow run); created in
    the flow's thread, then updated by id (`TrainingProgress`)."""
    if FlowRunContext.get() is None:
        return None
    return create_progress_artifact(
        progress=0.0, key=PROGRESS_KEY, description=f"Optimizer steps done of {max_steps}"
    )


class TrainingProgress:
    """Moves a progress artifact to the share of `max_steps` done as steps are logged.

    Updates name the artifact by id through a fresh Prefect client, so they are safe from
    whatever thread reports metrics (a lock keeps them in order). It moves in whole percents to
    spare the API, and a failed update is logged, never raised: a progress bar must not stop a
    long training run.
    """

    def __init__(self, artifact_id: UUID | None, max_steps: int) -> None:
        self.artifact_id = artifact_id
        self.max_steps = max_steps
        self.percent = 0.0
        self.lock = threading.Lock()

    def __call__(self, step: int) -> None:
        percent = float(min(100, 100 * step // self.max_steps))
        with self.lock:
            if self.artifact_id is None or percent <= self.percent:
                return
            try:
                update_progress_artifact(self.artifact_id, progress=percent)
                self.percent = percent
            except Exception as error:  # noqa: BLE001 - any API failure: keep training
                log.warning("pretrain progress artifact not updated (%s); training goes on", error)
                self.artifact_id = None


@task(name="train-model")
def train_task(
    config: TrainConfig,
    run_id: str,
    launch: TorchrunOptions,
    progress_id: UUID | None = None,
) -> tuple[TrainResult, list[dict[str, float]]]:
    """Train (in this process, or under torchrun when `launch` asks for several), streaming
    rank 0's metrics into MLflow run `run_id` and its steps into progress artifact
    `progress_id`; returns the result and the metrics."""
    progress = TrainingProgress(progress_id, config.max_steps)
    logger = MetricsLogger(run_id, on_step=progress)
    result = run_pretraining(config, on_log=logger, launch=launch)
    if result is None:
        raise RuntimeError(
            f"node {launch.node_rank} trained as one of {launch.nnodes} machines; run the flow "
            "on node 0 for its result"
        )
    return result, logger.history


@flow(name="pretrain", log_prints=True)
def pretrain(params: TrainParams = TrainParams(), parent_run_id: str | None = None) -> dict:
    """Pretrain a decoder-only transformer; checkpoints are resumable, the final model is
    written with a manifest that names the shards it was trained on."""
    out = Path(params.out).resolve()
    configure_tracking(out.parent, keep_existing=True)
    with stage_run("pretrain", params.model_dump(), parent_run_id) as run:
        launch = torchrun_options(params)
        progress_id = create_training_progress(params.max_steps)
        result, history = train_task(train_config(params), run.info.run_id, launch, progress_id)
        summary = {
            "out_dir": str(out),
            "completed": result.completed,
            "steps": result.steps,
            "tokens": result.tokens,
            "final_loss": result.final_train_loss,
            "final_val_loss": result.final_val_loss,
            "parameters": result.num_parameters,
            "seconds": round(result.seconds, 1),
        }
        if (out / "manifest.json").exists():  # absent when stopped early by stop_after
            manifest = log_stage_manifest(out, context="training")
            mlflow.log_artifact(str(out / "model_config.json"), artifact_path="model")
            tag_shards_input(manifest)
            if params.register_model:
                name = params.registered_model_name or default_registered_name(params.preset)
                version = register_checkpoint(out, name, params.model_alias or None)
                summary["registered_model"] = f"{name}:{version.version}"
        with plots.figure_files() as figures:
            plots.training_curves(history, figures / "loss.png")
            mlflow.log_artifacts(str(figures), artifact_path="plots")
        run_link = mlflow_run_markdown(
            mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id
        )
        publish_markdown(
            "pretrain-summary",
            f"# pretrain\n\nMLflow run: {run_link}\n\n"
            + "".join(f"- **{k}**: {v}\n" for k, v in summary.items()),
        )
    print(f"pretrain: {summary}")
    return summary
