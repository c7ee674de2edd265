"""`evaluate`: validation loss, perplexity, bits per byte (overall and per language), BLiMP and
sampled generations."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from prefect import flow, task

from lmforge.flows.params import EvalRun
from lmforge.flows.reports import publish_markdown, publish_table
from lmforge.flows.registry import record_evaluation, versions_of_run
from lmforge.flows.stage_flow import StageFlow
from lmforge.flows.tracking import section_values, stage_flow_run_name
from lmforge.errors import OutputRefused
from lmforge.manifest import (
    MANIFEST_NAME,
    manifest_digest,
    overlapping_input,
    stage_output,
)
from lmforge.tasks.evaluate.benchmarks import benchmark_metrics, results_markdown, results_table
from lmforge.tasks.evaluate.checkpoint import EvalConfig, evaluate_checkpoint
from lmforge.tracking_tags import (
    CHECKPOINT_DIGEST_TAG,
    CHECKPOINT_TAG,
    MODEL_VERSIONS_TAG,
    TRAINING_RUN_ID_TAG,
    find_stage_run,
)


STAGE = "evaluate"


def evaluation_inputs(config: EvalConfig, run: EvalRun) -> list[str]:
    """The local folders and files an evaluation reads (benchmark URLs are left to the task)."""
    sources = [run.checkpoint, run.shards, run.blimp, run.data]
    sources += [*(config.tasks or {}).values(), *(config.fewshot_from or {}).values()]
    return [source for source in sources if source]


def claim_results_file(path: str | None, inputs: list[str]) -> None:
    """Refuse (OutputRefused) a results file that names a folder or overlaps an input."""
    if not path:
        return
    if Path(path).is_dir():
        raise OutputRefused(
            f"results file {Path(path).resolve()} is a folder: name a JSON file to write, "
            "e.g. results.json"
        )
    source = overlapping_input(path, inputs)
    if source is not None:
        raise OutputRefused(
            f"results file {Path(path).resolve()} overlaps the input {source}: writing it would "
            "change the input; name a file outside the inputs"
        )


@task(name="evaluate-checkpoint")
def evaluate_task(config: EvalConfig, run: EvalRun) -> dict:
    return evaluate_checkpoint(
        run.checkpoint,
        run.shards,
        config,
        data_dir=run.data,
        blimp_dir=run.blimp,
        benchmark_cache=run.benchmark_cache,
    )


def model_lineage_tags(checkpoint: Path) -> dict[str, str]:
    """Tags naming what was evaluated: the checkpoint (path, manifest digest), the training run
    that wrote it and the registered model versions that run logged, when they can be found."""
    tags = {CHECKPOINT_TAG: str(checkpoint)}
    if (checkpoint / MANIFEST_NAME).is_file():
        tags[CHECKPOINT_DIGEST_TAG] = manifest_digest(checkpoint)
    training = find_stage_run(checkpoint)
    if training is not None:
        tags[TRAINING_RUN_ID_TAG] = training.info.run_id
        versions = versions_of_run(training.info.run_id)
        if versions:
            tags[MODEL_VERSIONS_TAG] = ",".join(f"{v.name}:{v.version}" for v in versions)
    return tags


def evaluated_versions(tags: dict[str, str]) -> list[ModelVersion]:
    """The registered versions that `model_lineage_tags` found for the checkpoint."""
    client = MlflowClient()
    entries = filter(None, tags.get(MODEL_VERSIONS_TAG, "").split(","))
    return [client.get_model_version(*entry.rsplit(":", 1)) for entry in entries]


def scores(results: dict) -> dict[str, float]:
    names = ("val_loss", "val_ppl", "val_bpb", "blimp_acc")
    return {k: float(results[k]) for k in names if results.get(k) is not None}


LANGUAGE_METRICS = ("val_loss", "val_ppl", "val_bpb", "val_tokens")


def language_scores(results: dict) -> dict[str, float]:
    """MLflow metrics `lang.xx.val_bpb` (and loss, ppl, tokens) of each evaluated language."""
    return {
        f"lang.{lang}.{name}": float(values[name])
        for lang, values in (results.get("languages") or {}).items()
        for name in LANGUAGE_METRICS
    }


def language_rows(results: dict) -> list[dict]:
    """One table row per language: the per-language scores, rounded for reading."""
    return [
        {
            "language": lang,
            "val_loss": round(values["val_loss"], 4),
            "val_ppl": round(values["val_ppl"], 2),
            "val_bpb": round(values["val_bpb"], 4),
            "val_tokens": values["val_tokens"],
            "docs": values["docs"],
        }
        for lang, values in (results.get("languages") or {}).items()
    ]


@flow(name="evaluate", flow_run_name=stage_flow_run_name, log_prints=True)
def evaluate(eval: EvalConfig = EvalConfig(), run: EvalRun = EvalRun()) -> dict:
    """Score a checkpoint and write `results.json` with a manifest naming checkpoint and shards.

    `eval` decides what is measured and how; `run` names the checkpoint, the shards, the other
    inputs and where the results go."""
    checkpoint = Path(run.checkpoint).resolve()
    out = run.out or checkpoint.parent / "eval"
    inputs = evaluation_inputs(eval, run)
    claim_results_file(run.results_json, inputs)  # before any work, like `out` below
    stage = StageFlow.start(STAGE, {"eval": eval, "run": run}, out, inputs=inputs)
    lineage = model_lineage_tags(checkpoint)
    with stage.mlflow_run(tags=lineage) as mlflow_run:
        results = evaluate_task(eval, run)
        with stage_output(
            stage.out, STAGE, section_values(stage.sections), inputs=[run.checkpoint, run.shards]
        ) as output:
            (output.path / "results.json").write_text(json.dumps(results, indent=2))
            output.counts.update(scores(results))
        if run.results_json:
            Path(run.results_json).parent.mkdir(parents=True, exist_ok=True)
            Path(run.results_json).write_text(json.dumps(results, indent=2))
        stage.record_output(context="evaluation")  # the scores are the manifest's counts
        for paradigm, accuracy in (results.get("blimp") or {}).items():
            mlflow.log_metric(f"blimp.{paradigm}", accuracy)
        if results.get("languages"):
            mlflow.log_metrics(language_scores(results))
            publish_table(
                "evaluate-languages",
                language_rows(results),
                "Validation loss, perplexity and bits per byte per language",
            )
        mlflow.log_dict(results, "results.json")
        benchmarks = results.get("benchmarks") or {}
        if benchmarks:
            rows = results_table(benchmarks)
            mlflow.log_metrics(benchmark_metrics(benchmarks))
            mlflow.log_dict({"rows": rows}, "benchmarks/results_table.json")
            mlflow.log_text(results_markdown(rows), "benchmarks/results_table.md")
            publish_table("evaluate-benchmarks", rows, "Benchmark scores (± standard error)")
            table = "# Benchmarks\n\n" + results_markdown(rows)
            publish_markdown("evaluate-benchmarks-table", table)
        # Last: a version names its evaluation only once the run holds all of it.
        record_evaluation(evaluated_versions(lineage), mlflow_run.info.run_id, scores(results))
        publish_table(
            "evaluate-scores",
            [{"metric": k, "value": round(v, 4)} for k, v in scores(results).items()],
            "Evaluation scores",
        )
        publish_markdown(
            "evaluate-samples",
            "# Sampled generations\n\n"
            + "".join(f"**{s['prompt']}**{s['completion']}\n\n" for s in results["samples"]),
        )
    print("evaluate: " + ", ".join(f"{k}={v:.4f}" for k, v in scores(results).items()))
    for row in language_rows(results):
        print(f"  {row['language']}: val_bpb={row['val_bpb']} over {row['val_tokens']} tokens")
    if results.get("languages_skipped"):
        print(f"  per-language metrics skipped: {results['languages_skipped']}")
    for row in results_table(results.get("benchmarks") or {}):
        print(f"  {row['task']}.{row['metric']} = {row['value']:.4f} ± {row['stderr']}")
    return results
