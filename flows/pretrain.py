"""`pretrain`: train the transformer on token shards; metrics stream into the stage's MLflow run
and, a line per report, into the flow run's logs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from uuid import UUID

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext

from lmforge.flows.params import PretrainRun
from lmforge.flows.registry import default_registered_name, register_checkpoint
from lmforge.flows.stage_flow import StageFlow
from lmforge.flows.tracking import MetricsLogger, log_stage_manifest, stage_flow_run_name
from lmforge.model.config import ModelSpec
from lmforge.model.train import TrainConfig, TrainJob, TrainResult
from lmforge.tasks import plots
from lmforge.tasks.pretrain import TorchrunOptions, run_pretraining
from lmforge.tracking_tags import SHARDS_DIGEST_TAG, SHARDS_TAG

log = logging.getLogger(__name__)


def tag_shards_input(manifest: dict) -> None:
    """Tag the training run with the shards it read (path and manifest digest), for lineage."""
    for item in manifest.get("inputs", []):
        if item.get("stage") == "build_shards":
            mlflow.set_tag(SHARDS_TAG, item["path"])
            mlflow.set_tag(SHARDS_DIGEST_TAG, item.get("manifest_sha256", ""))


def torchrun_options(run: PretrainRun) -> TorchrunOptions:
    return TorchrunOptions(
        nproc=run.nproc, nnodes=run.nnodes, node_rank=run.node_rank,
        rdzv_endpoint=run.rdzv_endpoint, isolate=run.isolate,
    )  # fmt: skip


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


class TrainingLog:
    """Writes each metrics report of training to `logger` (the flow run's logs: the Prefect UI's
    Logs tab) as one line, `training_line`, and each validation loss as another. Safe from the
    thread that reports metrics."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, max_steps: int) -> None:
        self.logger = logger
        self.max_steps = max_steps

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        if "loss" in metrics:
            self.logger.info(training_line(step, self.max_steps, metrics))
        if "val_loss" in metrics:
            self.logger.info(f"step {step}/{self.max_steps}: val_loss {metrics['val_loss']:.4f}")


def training_line(step: int, max_steps: int, metrics: Mapping[str, float]) -> str:
    """`step 200/2000: loss 3.4120, 52,310 tokens/s, MFU 31.2%, ETA 6m12s`. The time left is
    the steps left at the reported tokens/s (`tokens` / `step` tokens a step, which holds for
    a resumed run too); MFU is `n/a` where training knows no peak FLOP/s for the device."""
    tokens_per_s = metrics.get("tokens_per_s", 0.0)
    mfu = f"MFU {100 * metrics['mfu']:.1f}%" if "mfu" in metrics else "MFU n/a"
    eta = "ETA unknown"
    if tokens_per_s > 0 and step > 0 and "tokens" in metrics:
        seconds_left = (max_steps - step) * (metrics["tokens"] / step) / tokens_per_s
        eta = f"ETA {duration(seconds_left)}"
    return (
        f"step {step}/{max_steps}: loss {metrics['loss']:.4f}, {tokens_per_s:,.0f} tokens/s, "
        f"{mfu}, {eta}"
    )


def duration(seconds: float) -> str:
    """`45s`, `6m12s`, `2h05m`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@task(name="train-model")
def train_task(
    config: TrainJob,
    run_id: str,
    launch: TorchrunOptions,
    progress_id: UUID | None = None,
) -> tuple[TrainResult, list[dict[str, float]]]:
    """Train (in this process, or under torchrun when `launch` asks for several), streaming
    rank 0's metrics into MLflow run `run_id`, the flow run's logs (`TrainingLog`) and its
    steps into progress artifact `progress_id`; returns the result and the metrics."""
    progress = TrainingProgress(progress_id, config.train.max_steps)
    logger = MetricsLogger(run_id, on_step=progress)
    lines = TrainingLog(get_run_logger(), config.train.max_steps)

    def report(step: int, metrics: Mapping[str, float]) -> None:
        logger(step, metrics)
        lines(step, metrics)

    result = run_pretraining(config, on_log=report, launch=launch)
    if result is None:
        raise RuntimeError(
            f"node {launch.node_rank} trained as one of {launch.nnodes} machines; run the flow "
            "on node 0 for its result"
        )
    return result, logger.history


@flow(name="pretrain", flow_run_name=stage_flow_run_name, log_prints=True)
def pretrain(
    model: ModelSpec = ModelSpec(),
    train: TrainConfig = TrainConfig(),
    run: PretrainRun = PretrainRun(),
) -> dict:
    """Pretrain a decoder-only transformer; checkpoints are resumable, the final model is
    written with a manifest that names the shards it was trained on.

    `model` is the shape, `train` how it is trained, `run` the folders, processes and registry."""
    # No claim here: the training job claims `out` (a folder of checkpoints is a run to resume).
    stage = StageFlow.start("pretrain", {"model": model, "train": train, "run": run}, run.out)
    out = stage.out
    job = TrainJob(shards_dir=run.shards, out_dir=run.out, model=model, train=train)
    with stage.mlflow_run() as mlflow_run:
        launch = torchrun_options(run)
        progress_id = create_training_progress(train.max_steps)
        result, history = train_task(job, mlflow_run.info.run_id, launch, progress_id)
        stage.record_config()
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
            manifest = log_stage_manifest(out, context="training", step=result.steps)
            mlflow.log_artifact(str(out / "model_config.json"), artifact_path="model")
            tag_shards_input(manifest)
            if run.register_model:
                name = run.registered_model_name or default_registered_name(model.preset)
                version = register_checkpoint(out, name, run.model_alias or None)
                summary["registered_model"] = f"{name}:{version.version}"
        with plots.figure_files() as figures:
            plots.training_curves(history, figures / "loss.png")
            mlflow.log_artifacts(str(figures), artifact_path="plots")
        stage.publish_summary(
            mlflow_run, "".join(f"- **{k}**: {v}\n" for k, v in summary.items())
        )
    print(f"pretrain: {summary}")
    return summary
