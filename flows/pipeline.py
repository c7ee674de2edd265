"""`pipeline`: the whole product in one flow — WARC in, evaluated model out, one MLflow parent
run with a child run per stage."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow

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
from lmforge.flows.reports import publish_markdown
from lmforge.flows.tracking import configure_tracking, prefect_tags


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


@flow(name="pipeline", log_prints=True)
def pipeline(params: PipelineParams = PipelineParams()) -> dict:
    """data_refresh -> build_shards -> pretrain -> evaluate, each a child MLflow run."""
    work = Path(params.work_dir).resolve()
    tracking_uri = configure_tracking(work)
    data_params, shard_params, train_params, eval_params = stage_params(params)
    with mlflow.start_run(run_name="pipeline", tags={"lmforge.stage": "pipeline", **prefect_tags()}) as run:
        mlflow.log_params({k: str(v) for k, v in params.model_dump().items()})
        parent = run.info.run_id
        data_manifest = data_refresh(data_params, parent_run_id=parent)
        shard_manifest = build_shards(shard_params, parent_run_id=parent)
        training = pretrain(train_params, parent_run_id=parent)
        results = evaluate(eval_params, parent_run_id=parent)
        headline = {k: results[k] for k in ("val_loss", "val_bpb", "blimp_acc") if k in results}
        mlflow.log_metrics({k: float(v) for k, v in headline.items()})
    summary = {
        "work_dir": str(work),
        "data": data_params.out,
        "shards": shard_params.out,
        "checkpoint": train_params.out,
        "results": str(Path(eval_params.out) / "results.json"),
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_run_id": parent,
        "documents": data_manifest["counts"]["kept"],
        "train_tokens": shard_manifest["splits"]["train"]["tokens"],
        "final_train_loss": training.get("final_loss"),
        **headline,
    }
    publish_markdown(
        "pipeline-summary", "# lmforge pipeline\n\n" + "".join(f"- **{k}**: `{v}`\n" for k, v in summary.items())
    )
    return summary
