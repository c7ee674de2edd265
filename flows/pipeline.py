"""`pipeline`: the whole product in one flow — WARC in, evaluated model out, one MLflow parent
run with a child run per stage.

Stages whose finished output matches what this run would do (same inputs, parameters and code,
see `stage_cache`) are reused, not rerun: after a crash, a rerun resumes at the failed stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, task
from prefect.states import Completed
from pydantic import BaseModel

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
from lmforge.flows.stage_cache import StageCache, code_version, stage_key
from lmforge.flows.stage_flow import StageFlow
from lmforge.flows.stages import PIPELINE_STAGES
from lmforge.flows.tracking import (
    child_runs_of,
    configure_tracking,
    log_stage_manifest,
    section_values,
    stage_run,
)
from lmforge.manifest import MANIFEST_NAME, describe_input, read_manifest
from lmforge.model.config import ModelSpec
from lmforge.model.train import TrainConfig
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.refresh import resolve_inputs
from lmforge.tasks.evaluate.checkpoint import EvalConfig
from lmforge.tasks.tokens.shards import ShardConfig
from lmforge.tracking_tags import CACHE_TAG, CACHED_STAGES_TAG, CODE_VERSION_TAG, STAGE_TAG

STAGES = PIPELINE_STAGES  # data_refresh, build_shards, pretrain, evaluate: the registry's order


def stage_runs(run: PipelineRun) -> tuple[DataRefreshRun, ShardsRun, PretrainRun, EvalRun]:
    """Each stage's folders under `run.work_dir`, wired output to input."""
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


@task(name="reuse-stage-output", task_run_name="reuse {stage} output")
def reuse_stage_output(stage: str, sections: dict[str, BaseModel], out: str, parent_run_id: str):
    """Record a reused stage: a child MLflow run tagged `lmforge.cache=hit` with the output's
    manifest and inputs (lineage stays complete), and a Cached state in Prefect."""
    with stage_run(stage, section_values(sections), parent_run_id):
        mlflow.set_tag(CACHE_TAG, "hit")
        log_stage_manifest(out)
    print(f"{stage}: reusing {out} (same inputs, parameters and code)")
    return Completed(name="Cached", message=f"reused {out}")


def run_or_reuse(
    stage: str,
    stage_flow: Callable[..., Any],
    sections: dict[str, BaseModel],
    out: str,
    inputs: list[dict[str, Any]],
    cache: StageCache,
    parent_run_id: str,
    record: str | None = None,
) -> str:
    """Run `stage_flow(**sections)` as a child of MLflow run `parent_run_id`, unless `cache`
    holds its finished output; returns "ran" or "cached". `record` names the stage's entry in
    `cache` (default: the stage), for a work dir that runs a stage more than once."""
    key = stage_key(stage, section_values(sections), inputs)
    if cache.lookup(record or stage, key, out) is not None:
        reuse_stage_output(stage, sections, out, parent_run_id)
        return "cached"
    if stage == "pretrain":
        set_aside_finished_training(Path(out))
    with child_runs_of(parent_run_id):
        stage_flow(**sections)
    cache.store(record or stage, key, out)
    return "ran"


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
    cache = StageCache(work)
    sections = {
        "data": data, "shards": shards, "model": model, "train": train, "eval": eval, "run": run,
    }  # fmt: skip
    stage = StageFlow.start("pipeline", sections, work)
    with stage.mlflow_run(tags={CODE_VERSION_TAG: code_version()}) as mlflow_run:
        stage.record_config()
        parent = mlflow_run.info.run_id
        outcomes = {
            "data_refresh": run_or_reuse(
                "data_refresh", data_refresh, {"data": data, "run": data_run}, data_run.out,
                data_inputs(data_run), cache, parent,
            ),
        }
        outcomes["build_shards"] = run_or_reuse(
            "build_shards", build_shards, {"shards": shards, "run": shards_run}, shards_run.out,
            [describe_input(shards_run.data)], cache, parent,
        )
        outcomes["pretrain"] = run_or_reuse(
            "pretrain", pretrain, {"model": model, "train": train, "run": train_run},
            train_run.out, [describe_input(train_run.shards)], cache, parent,
        )
        outcomes["evaluate"] = run_or_reuse(
            "evaluate", evaluate, {"eval": eval, "run": eval_run}, eval_run.out,
            [describe_input(eval_run.checkpoint), describe_input(eval_run.shards)],
            cache, parent,
        )
        results = json.loads((Path(eval_run.out) / "results.json").read_text())
        headline = {k: results[k] for k in ("val_loss", "val_bpb", "blimp_acc") if k in results}
        mlflow.log_metrics({k: float(v) for k, v in headline.items()})
        cached = [name for name in STAGES if outcomes[name] == "cached"]
        mlflow.set_tag(CACHED_STAGES_TAG, ",".join(cached))
        experiment_id = mlflow_run.info.experiment_id
    summary = {
        "work_dir": str(work),
        "data": data_run.out,
        "shards": shards_run.out,
        "checkpoint": train_run.out,
        "results": str(Path(eval_run.out) / "results.json"),
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_run_id": parent,
        "documents": read_manifest(data_run.out)["counts"]["kept"],
        "train_tokens": read_manifest(shards_run.out)["splits"]["train"]["tokens"],
        "final_train_loss": read_manifest(train_run.out)["counts"].get("final_train_loss"),
        "stages": outcomes,
        **headline,
    }
    publish_report(summary, tracking_uri, experiment_id)
    return summary


def set_aside_finished_training(out: Path) -> Path | None:
    """A finished training run in `out` that this pipeline run does not reuse (its settings or
    inputs changed) is renamed to `out.superseded-<UTC time>`, never overwritten or deleted:
    training then starts afresh in `out`. Checkpoints without a manifest are a run that stopped
    early, and the pipeline resumes it instead."""
    if not (out / MANIFEST_NAME).is_file():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    kept = out.with_name(f"{out.name}.superseded-{stamp}")
    out.rename(kept)
    print(f"pretrain: settings or inputs changed; the previous run is kept in {kept}")
    return kept


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
