"""`train_quality_classifier`: a fastText quality classifier trained on positive (curated) and
negative (random web) sources, its held-out ROC AUC, precision, recall and F1 in MLflow, and
the model as the run's artifact (`model/model.bin`) and the output folder's."""

from __future__ import annotations

from dataclasses import asdict

import mlflow
from prefect import flow, task

from lmforge.flows.params import QualityTrainRun
from lmforge.flows.stage_flow import StageFlow
from lmforge.tasks import plots
from lmforge.tasks.data.quality.sources import check_source
from lmforge.tasks.data.quality.train import (
    METRICS_FILE,
    MODEL_FILE,
    STAGE,
    QualityTrainConfig,
    QualityTrainResult,
    trainer_dir,
    write_roc_plot,
)
from lmforge.tasks.data.quality.train import (
    train_quality_classifier as train_classifier,
)

HELDOUT_METRICS = ("auc", "precision", "recall", "f1", "accuracy")


def check_quality_inputs(run: QualityTrainRun, **sections: object) -> None:
    """Before the flow starts: a fastText build that trains, and every source (`check_source`:
    its files, format, text column, JSONL lines, and some documents)."""
    trainer_dir()
    for source in [*run.positive, *run.negative]:
        check_source(source)


@task(name="train-quality-classifier")
def quality_task(config: QualityTrainConfig, run: QualityTrainRun) -> QualityTrainResult:
    return train_classifier(run.positive, run.negative, run.out, config)


@flow(name="quality_classifier", log_prints=True)
def train_quality_classifier(
    quality: QualityTrainConfig = QualityTrainConfig(), *, run: QualityTrainRun
) -> dict:
    """Train a fastText classifier that tells the positive sources' documents from the negative
    ones' and measure it on held-out documents.

    `quality` decides the sample, the split and fastText's settings; `run` names the sources
    (no default) and the output folder."""
    sections = {"quality": quality, "run": run}
    stage = StageFlow.start(STAGE, sections, run.out, inputs=[*run.positive, *run.negative])
    out = stage.out
    with stage.mlflow_run() as mlflow_run:
        result = quality_task(quality, run)
        stage.record_output(context="training")
        metrics = asdict(result.metrics)
        mlflow.log_metrics({name: metrics[name] for name in HELDOUT_METRICS})
        mlflow.log_artifact(str(out / MODEL_FILE), artifact_path="model")
        mlflow.log_artifact(str(out / METRICS_FILE))
        with plots.figure_files() as figures:
            write_roc_plot(result.heldout_labels, result.heldout_scores, quality.threshold,
                           figures / "roc.png")  # fmt: skip
            mlflow.log_artifacts(str(figures), artifact_path="plots")
        stage.publish_summary(
            mlflow_run,
            f"Model: `{out / MODEL_FILE}`; held out {result.metrics.positives} positive and "
            f"{result.metrics.negatives} negative documents.\n\n"
            "| metric | value |\n|---|---|\n"
            + "".join(f"| {name} | {metrics[name]:.4f} |\n" for name in HELDOUT_METRICS)
            + f"\nthreshold: {quality.threshold}",
        )
        summary = {
            "out_dir": str(out),
            "model": str(out / MODEL_FILE),
            **{name: round(metrics[name], 4) for name in HELDOUT_METRICS},
            "threshold": quality.threshold,
            "counts": result.counts,
            "mlflow_run_id": mlflow_run.info.run_id,
            "seconds": round(result.seconds, 1),
        }
    print(f"quality_classifier: AUC {summary['auc']}, F1 {summary['f1']} -> {out / MODEL_FILE}")
    return summary
