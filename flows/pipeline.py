"""`pipeline`: the whole product in one flow — WARC in, evaluated model out, one MLflow parent
run with a child run per stage.

Stages whose finished output matches what this run would do (same inputs, parameters and code,
see `stage_cache`) are reused, not rerun: after a crash, a rerun resumes at the failed stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, task
from prefect.states import Completed
from pydantic import BaseModel

from lmforge.flows.build_shards import build_shards
from lmforge.flows.data_refresh import data_refresh
from lmforge.flows.evaluate import evaluate
from lmforge.flows.params import (
    DataRefreshParams,
    EvalParams,
    PipelineParams,
    ShardParams,
    TrainParams,
)
from lmforge.flows.pretrain import pretrain
from lmforge.flows.reports import (
    mlflow_run_markdown,
    mlflow_run_url,
    publish_link,
    publish_markdown,
)
from lmforge.flows.stage_cache import StageCache, code_version, stage_key
from lmforge.flows.tracking import configure_tracking, log_stage_manifest, prefect_tags, stage_run
from lmforge.manifest import describe_input, read_manifest
from lmforge.tasks.data.refresh import resolve_inputs

STAGES = ("data_refresh", "build_shards", "pretrain", "evaluate")


def stage_params(params: PipelineParams) -> tuple[DataRefreshParams, ShardParams, TrainParams, EvalParams]:
    work = Path(params.work_dir).resolve()
    data, shards, train, evaluation = (str(work / name) for name in ("data", "shards", "train", "eval"))
    return (
        DataRefreshParams(input=params.input, out=data, languages=params.languages),
        ShardParams(data=data, out=shards, vocab_size=params.vocab_size, seed=params.seed),
        TrainParams(
            shards=shards,
            out=train,
            preset=params.preset,
            max_steps=params.max_steps,
            batch_size=params.batch_size,
            seq_len=params.seq_len,
            seed=params.seed,
            # Rerunning into the same work dir continues (or reuses) that training run.
            resume=True,
        ),
        EvalParams(checkpoint=train, shards=shards, out=evaluation, blimp=params.blimp),
    )


def data_inputs(params: DataRefreshParams) -> list[dict[str, Any]]:
    """The WARC files' digests; the built-in sample is fixed by the code version alone."""
    if not params.input:
        return [{"sample_corpus": True}]
    return [describe_input(path) for path in resolve_inputs(params.input)]


@task(name="reuse-stage-output", task_run_name="reuse {stage} output")
def reuse_stage_output(stage: str, params: BaseModel, out: str, parent_run_id: str):
    """Record a reused stage: a child MLflow run tagged `lmforge.cache=hit` with the output's
    manifest and inputs (lineage stays complete), and a Cached state in Prefect."""
    with stage_run(stage, params.model_dump(), parent_run_id):
        mlflow.set_tag("lmforge.cache", "hit")
        log_stage_manifest(out)
    print(f"{stage}: reusing {out} (same inputs, parameters and code)")
    return Completed(name="Cached", message=f"reused {out}")


def run_or_reuse(
    stage: str,
    stage_flow: Callable[..., Any],
    params: BaseModel,
    out: str,
    inputs: list[dict[str, Any]],
    cache: StageCache,
    parent_run_id: str,
) -> str:
    """Run `stage_flow` unless `cache` holds its finished output; returns "ran" or "cached"."""
    key = stage_key(stage, params.model_dump(), inputs)
    if cache.lookup(stage, key, out) is not None:
        reuse_stage_output(stage, params, out, parent_run_id)
        return "cached"
    stage_flow(params, parent_run_id=parent_run_id)
    cache.store(stage, key, out)
    return "ran"


@flow(name="pipeline", log_prints=True)
def pipeline(params: PipelineParams = PipelineParams()) -> dict:
    """data_refresh -> build_shards -> pretrain -> evaluate, each a child MLflow run."""
    work = Path(params.work_dir).resolve()
    tracking_uri = configure_tracking(work)
    data_params, shard_params, train_params, eval_params = stage_params(params)
    cache = StageCache(work)
    tags = {"lmforge.stage": "pipeline", "lmforge.code_version": code_version(), **prefect_tags()}
    with mlflow.start_run(run_name="pipeline", tags=tags) as run:
        mlflow.log_params({k: str(v) for k, v in params.model_dump().items()})
        parent = run.info.run_id
        outcomes = {
            "data_refresh": run_or_reuse(
                "data_refresh", data_refresh, data_params, data_params.out,
                data_inputs(data_params), cache, parent,
            ),
        }
        outcomes["build_shards"] = run_or_reuse(
            "build_shards", build_shards, shard_params, shard_params.out,
            [describe_input(shard_params.data)], cache, parent,
        )
        outcomes["pretrain"] = run_or_reuse(
            "pretrain", pretrain, train_params, train_params.out,
            [describe_input(train_params.shards)], cache, parent,
        )
        outcomes["evaluate"] = run_or_reuse(
            "evaluate", evaluate, eval_params, eval_params.out,
            [describe_input(eval_params.checkpoint), describe_input(eval_params.shards)],
            cache, parent,
        )
        results = json.loads((Path(eval_params.out) / "results.json").read_text())
        headline = {k: results[k] for k in ("val_loss", "val_bpb", "blimp_acc") if k in results}
        mlflow.log_metrics({k: float(v) for k, v in headline.items()})
        cached = [stage for stage in STAGES if outcomes[stage] == "cached"]
        mlflow.set_tag("lmforge.cached_stages", ",".join(cached))
        experiment_id = run.info.experiment_id
    summary = {
        "work_dir": str(work),
        "data": data_params.out,
        "shards": shard_params.out,
        "checkpoint": train_params.out,
        "results": str(Path(eval_params.out) / "results.json"),
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_run_id": parent,
        "documents": read_manifest(data_params.out)["counts"]["kept"],
        "train_tokens": read_manifest(shard_params.out)["splits"]["train"]["tokens"],
        "final_train_loss": read_manifest(train_params.out)["counts"].get("final_train_loss"),
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
        run.data.tags.get("lmforge.stage"): mlflow_run_markdown(
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
