"""`evaluate`: validation loss, perplexity, bits per byte, BLiMP and sampled generations."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import flow, task

from lmforge.flows.params import EvalParams
from lmforge.flows.reports import publish_markdown, publish_table
from lmforge.flows.tracking import configure_tracking, log_stage_manifest, stage_run
from lmforge.manifest import stage_output
from lmforge.tasks.evaluate import evaluate_checkpoint


@task(name="evaluate-checkpoint")
def evaluate_task(params: EvalParams) -> dict:
    return evaluate_checkpoint(
        params.checkpoint,
        params.shards,
        blimp_dir=params.blimp,
        blimp_max_pairs=params.blimp_max_pairs,
        max_val_tokens=params.max_val_tokens,
        prompts=params.prompts,
        max_new_tokens=params.max_new_tokens,
    )


def scores(results: dict) -> dict[str, float]:
    names = ("val_loss", "val_ppl", "val_bpb", "blimp_acc")
    return {k: float(results[k]) for k in names if results.get(k) is not None}


@flow(name="evaluate", log_prints=True)
def evaluate(params: EvalParams = EvalParams(), parent_run_id: str | None = None) -> dict:
    """Score a checkpoint and write `results.json` with a manifest naming checkpoint and shards."""
    checkpoint = Path(params.checkpoint).resolve()
    out = Path(params.out).resolve() if params.out else checkpoint.parent / "eval"
    configure_tracking(out.parent, keep_existing=True)
    with stage_run("evaluate", params.model_dump(), parent_run_id):
        results = evaluate_task(params)
        with stage_output(
            out, "evaluate", params.model_dump(), inputs=[params.checkpoint, params.shards]
        ) as stage:
            (stage.path / "results.json").write_text(json.dumps(results, indent=2))
            stage.counts.update(scores(results))
        if params.results_json:
            Path(params.results_json).parent.mkdir(parents=True, exist_ok=True)
            Path(params.results_json).write_text(json.dumps(results, indent=2))
        log_stage_manifest(out, context="evaluation")
        mlflow.log_metrics(scores(results))
        for paradigm, accuracy in (results.get("blimp") or {}).items():
            mlflow.log_metric(f"blimp.{paradigm}", accuracy)
        mlflow.log_dict(results, "results.json")
        publish_table(
            "evaluate-scores",
            [{"metric": k, "value": round(v, 4)} for k, v in scores(results).items()],
            "Evaluation scores",
        )
        publish_markdown(
            "evaluate-samples",
            "# Sampled generations\n\n"
            + "".join(f"**{s['prompt']}**{s['completion']}\n\n" for s in results.get("samples", [])),
        )
    print("evaluate: " + ", ".join(f"{k}={v:.4f}" for k, v in scores(results).items()))
    return results
