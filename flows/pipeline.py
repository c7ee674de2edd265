"""`pipeline`: the whole product in one flow — WARC in, evaluated model out, one MLflow parent
run with a child run per stage.

Stages whose finished output matches what this run would do (same inputs, parameters and code,
see `stage_cache`) are reused, not rerun: after a crash, a rerun resumes at the failed stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow

from lmforge.flows.build_shards import build_shards
from lmforge.flows.data_refresh import data_refresh
from lmforge.flows.evaluate import evaluate
from lmforge.flows.params import DataRefreshRun, EvalRun, PipelineRun, PretrainRun, ShardsRun
from lmforge.flows.pretrain import pretrain
from lmforge.flows.reports import (
    mlflow_run_markdown,
    mlflow_run_url,
    publish_link,
    publish_markdown,
)
from lmforge.flows.stage_cache import code_version
from lmforge.flows.stage_flow import StageFlow
from lmforge.flows.stage_outputs import StageChain
from lmforge.flows.stages import PIPELINE_STAGES
from lmforge.flows.tracking import configure_tracking
from lmforge.manifest import describe_input, read_manifest
from lmforge.model.config import ModelSpec
from lmforge.model.train import TrainConfig
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.refresh import resolve_inputs
from lmforge.tasks.evaluate.checkpoint import EvalConfig
from lmforge.tasks.tokens.shards import ShardConfig
from lmforge.tracking_tags import CACHED_STAGES_TAG, CODE_VERSION_TAG, STAGE_TAG

STAGES = PIPELINE_STAGES  # data_refresh, build_shards, pretrain, evaluate: the registry's order


def stage_runs(run: PipelineRun) -> tuple[DataRefreshRun, ShardsRun, PretrainRun, EvalRun]:
    """Each stage's folders, wired output to input through the links `<work_dir>/data`,
    `shards`, `train` and `eval` (a `StageChain` gives each stage its own folder behind them)."""
    work = Path(run.work_dir).resolve()
    data, shards, train, evaluation = (str(work / name) for name in ("data", "shards", "train", "eval"))
    return (
        DataRefreshRun(input=run.input, out=data, workers=run.workers, runner=run.runner,
                       dask_address=run.dask_address),
        ShardsRun(data=data, out=shards),
        PretrainRun(shards=shards, out=train, register_model=run.register_model,
                    registered_model_name=run.registered_model_name, model_alias=run.model_alias),
        EvalRun(checkpoint=train, shards=shards, out=evaluation, blimp=run.blimp),
    )  # fmt: skip


def data_inputs(run: DataRefreshRun) -> list[dict[str, Any]]:
    """The WARC files' digests; the built-in sample is fixed by the code version alone."""
    if not run.input:
        return [{"sample_corpus": True}]
    return [describe_input(path) for path in resolve_inputs(run.input)]


@flow(name="pipeline", log_prints=True)
def pipeline(
    data: DataConfig = DataConfig(),
    shards: ShardConfig = ShardConfig(),
    model: ModelSpec = ModelSpec(),
    train: TrainConfig = TrainConfig(),
    eval: EvalConfig = EvalConfig(),
    run: PipelineRun = PipelineRun(),
) -> dict:
    """data_refresh -> build_shards -> pretrain -> evaluate, each a child MLflow run.

    One section per stage (`data`, `shards`, `model`, `train`, `eval`) says what it does; `run`
    says what goes in and where the stages write."""
    work = Path(run.work_dir).resolve()
    # The pipeline's work dir holds the tracking store; its stages, and its own run, keep it.
    tracking_uri = configure_tracking(work)
    data_run, shards_run, train_run, eval_run = stage_runs(run)
    # Rerunning into the same work dir continues (or reuses) that training run.
    train = train.model_copy(update={"resume": True})
    sections = {
        "data": data, "shards": shards, "model": model, "train": train, "eval": eval, "run": run,
    }  # fmt: skip
    stage = StageFlow.start("pipeline", sections, work)
    with stage.mlflow_run(tags={CODE_VERSION_TAG: code_version()}) as mlflow_run:
        stage.record_config()
        parent = mlflow_run.info.run_id
        chain = StageChain(work, parent)
        data_dir = chain.run(
            "data_refresh", data_refresh, {"data": data, "run": data_run}, data_inputs(data_run),
            "data", folder_identity=data.to_dict(),
        )
        shards_run = shards_run.model_copy(update={"data": str(data_dir)})
        shards_dir = chain.run(
            "build_shards", build_shards, {"shards": shards, "run": shards_run},
            [describe_input(data_dir)], "shards",
        )
        train_run = train_run.model_copy(update={"shards": str(shards_dir)})
        train_dir = chain.run(
            "pretrain", pretrain, {"model": model, "train": train, "run": train_run},
            [describe_input(shards_dir)], "train",
        )
        eval_run = eval_run.model_copy(
            update={"checkpoint": str(train_dir), "shards": str(shards_dir)}
        )
        eval_dir = chain.run(
            "evaluate", evaluate, {"eval": eval, "run": eval_run},
            [describe_input(train_dir), describe_input(shards_dir)], "eval",
        )
        outcomes = chain.outcomes
        results = json.loads((eval_dir / "results.json").read_text())
        headline = {k: results[k] for k in ("val_loss", "val_bpb", "blimp_acc") if k in results}
        mlflow.log_metrics({k: float(v) for k, v in headline.items()})
        cached = [name for name in STAGES if outcomes[name] == "cached"]
        mlflow.set_tag(CACHED_STAGES_TAG, ",".join(cached))
        experiment_id = mlflow_run.info.experiment_id
    summary = {
        "work_dir": str(work),
        "data": str(data_dir),
        "shards": str(shards_dir),
        "checkpoint": str(train_dir),
        "results": str(eval_dir / "results.json"),
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_run_id": parent,
        "documents": read_manifest(data_dir)["counts"]["kept"],
        "train_tokens": read_manifest(shards_dir)["splits"]["train"]["tokens"],
        "final_train_loss": read_manifest(train_dir)["counts"].get("final_train_loss"),
        "stages": outcomes,
        **headline,
    }
    publish_report(summary, tracking_uri, experiment_id)
    return summary


def publish_report(summary: dict, tracking_uri: str, experiment_id: str) -> None:
    """The pipeline's Prefect artifacts: a summary with a row and an MLflow link per stage."""
    parent = summary["mlflow_run_id"]
    children = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
    links = {
        run.data.tags.get(STAGE_TAG): mlflow_run_markdown(
            tracking_uri, experiment_id, run.info.run_id
        )
        for run in children
    }
    outputs = dict(zip(STAGES, ("data", "shards", "checkpoint", "results")))
    rows = "".join(
        f"| {stage} | {summary['stages'][stage]} | `{summary[outputs[stage]]}` | "
        f"{links.get(stage, '-')} |\n"
        for stage in STAGES
    )
    scores = ("val_loss", "val_bpb", "blimp_acc")
    headline = "".join(f"- **{k}**: {summary[k]:.4f}\n" for k in scores if k in summary)
    publish_markdown(
        "pipeline-summary",
        "# lmforge pipeline\n\n"
        f"MLflow run: {mlflow_run_markdown(tracking_uri, experiment_id, parent)}\n\n"
        f"- **documents**: {summary['documents']}\n- **train tokens**: {summary['train_tokens']}\n"
        f"- **final train loss**: {summary['final_train_loss']}\n{headline}\n"
        "| stage | ran or reused | output | MLflow run |\n|---|---|---|---|\n" + rows,
    )
    url = mlflow_run_url(tracking_uri, experiment_id, parent)
    if url:
        publish_link("mlflow-pipeline-run", url, "The pipeline's parent run in MLflow")
