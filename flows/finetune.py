"""`finetune_classifier`, `finetune_instruct`: fine-tune a pretrained checkpoint, tracked in MLflow.

Each run is a child of the base model's MLflow run (found by the `lmforge.output_dir` tag that the
pretrain stage sets), or of the run an enclosing flow names (`child_runs_of`); it is tagged with
the base checkpoint's path and manifest digest, and registers its result in the MLflow Model
Registry. The registered model is the network's forward pass exported with `torch.export`
(MLflow's pickle-free "pt2" format): it maps right-padded token ids [batch, max_len] to class
logits, or to next-token logits; the output directory's safetensors files are what
`lmforge.model` loads to generate.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import flow, task

from lmforge.flows.params import FinetuneClassifierRun, FinetuneInstructRun
from lmforge.flows.reports import publish_markdown, publish_table
from lmforge.flows.registry import example_ids, log_pt2_model
from lmforge.flows.stage_flow import StageFlow
from lmforge.flows.tracking import MetricsLogger, enclosing_parent_run
from lmforge.manifest import manifest_digest
from lmforge.model.checkpoint import load_model
from lmforge.model.classifier import load_classifier
from lmforge.tasks import plots
from lmforge.tasks.finetune.classify import ClassifierConfig, ClassifierResult
from lmforge.tasks.finetune.classify import finetune_classifier as train_classifier
from lmforge.tasks.finetune.instruct import InstructConfig, InstructResult
from lmforge.tasks.finetune.instruct import finetune_instruct as train_instruct
from lmforge.tracking_tags import (
    BASE_MODEL_DIGEST_TAG,
    BASE_MODEL_TAG,
    BASE_RUN_ID_TAG,
    find_stage_run,
)


def base_model_lineage(base_model: str) -> tuple[str | None, dict[str, str]]:
    """The parent for the fine-tuning run and the tags that name its base model.

    Parent: the run an enclosing flow names (`child_runs_of`); else the base model's run, unless
    a run is already active (a pipeline's), which then stays the parent and the base run is
    recorded as a tag.
    """
    base = Path(base_model).resolve()
    tags = {BASE_MODEL_TAG: str(base), BASE_MODEL_DIGEST_TAG: manifest_digest(base)}
    found = find_stage_run(base)
    base_run = found.info.run_id if found else None
    if base_run:
        tags[BASE_RUN_ID_TAG] = base_run
    parent = enclosing_parent_run() or (None if mlflow.active_run() else base_run)
    return parent, tags


@task(name="finetune-classifier")
def classifier_task(
    config: ClassifierConfig, run: FinetuneClassifierRun, run_id: str
) -> ClassifierResult:
    return train_classifier(run.base_model, run.data, run.out, config, on_log=MetricsLogger(run_id))


@task(name="finetune-instruct")
def instruct_task(config: InstructConfig, run: FinetuneInstructRun, run_id: str) -> InstructResult:
    return train_instruct(run.base_model, run.data, run.out, config, on_log=MetricsLogger(run_id))


@flow(name="finetune_classifier", log_prints=True)
def finetune_classifier(
    finetune: ClassifierConfig = ClassifierConfig(),
    run: FinetuneClassifierRun = FinetuneClassifierRun(),
) -> dict:
    """Fine-tune a pretrained checkpoint as a text classifier; report held-out accuracy and
    macro-F1 against the majority baseline, and register the classifier.

    `finetune` decides how it is trained; `run` names the base model, the data, the output
    folder and the registry name."""
    sections = {"finetune": finetune, "run": run}
    stage = StageFlow.start(
        "finetune_classifier", sections, run.out, inputs=[run.base_model, run.data]
    )
    out = stage.out
    parent, tags = base_model_lineage(run.base_model)
    with stage.mlflow_run(parent, tags=tags) as mlflow_run:
        result = classifier_task(finetune, run, mlflow_run.info.run_id)
        stage.record_output(context="training")
        classifier, labels = load_classifier(out)
        context = classifier.base.config.max_seq_len
        max_len = min(finetune.max_len or context, context)
        info = log_pt2_model(
            classifier,
            example_ids(max_len, classifier.pad_id),
            "classifier",
            run.registered_model_name,
        )
        mlflow.log_metrics(result.metrics(), model_id=info.model_id)
        mlflow.log_dict(json.loads((out / "metrics.json").read_text()), "metrics.json")
        mlflow.log_artifact(str(out / "confusion_matrix.png"), artifact_path="plots")
        with plots.figure_files() as figures:
            plots.training_curves(result.history, figures / "loss.png")
            mlflow.log_artifacts(str(figures), artifact_path="plots")
        summary = {
            "out_dir": str(out),
            **{k: round(v, 4) for k, v in result.metrics().items()},
            "labels": labels,
            "train_examples": result.train_examples,
            "val_examples": result.val_examples,
            "mlflow_run_id": mlflow_run.info.run_id,
            "parent_run_id": parent,
            "model_uri": info.model_uri,
            "registered_version": getattr(info, "registered_model_version", None),
            "seconds": round(result.seconds, 1),
        }
        publish_table(
            "finetune-classifier-scores",
            [{"metric": k, "value": round(v, 4)} for k, v in result.metrics().items()],
            "Held-out scores (majority_accuracy: always predicting the most frequent class)",
        )
    print(f"finetune_classifier: {summary}")
    return summary


@flow(name="finetune_instruct", log_prints=True)
def finetune_instruct(
    finetune: InstructConfig = InstructConfig(), *, run: FinetuneInstructRun
) -> dict:
    """Supervised instruction fine-tuning (full or LoRA) of a pretrained checkpoint; logs the
    held-out response-token loss and generated responses, and registers the model.

    `finetune` decides how it is trained; `run` names the base model, the records (no
    default), the output folder and the registry name."""
    sections = {"finetune": finetune, "run": run}
    stage = StageFlow.start(
        "finetune_instruct", sections, run.out, inputs=[run.base_model, run.data]
    )
    out = stage.out
    parent, tags = base_model_lineage(run.base_model)
    with stage.mlflow_run(parent, tags=tags) as mlflow_run:
        result = instruct_task(finetune, run, mlflow_run.info.run_id)
        stage.record_output(context="training")
        model = load_model(out)
        info = log_pt2_model(
            model, example_ids(model.config.max_seq_len), "model", run.registered_model_name
        )
        mlflow.log_metrics(result.metrics(), model_id=info.model_id)
        if result.samples:
            keys = ("prompt", "reference", "response")
            mlflow.log_table(
                {key: [s[key] for s in result.samples] for key in keys}, "samples.json"
            )
        if (out / "lora.json").is_file():
            mlflow.log_artifact(str(out / "lora.json"), artifact_path="lora")
        with plots.figure_files() as figures:
            # The held-out curve is the response-token loss: plot it as the validation loss.
            renamed = {"loss": "loss", "val_response_loss": "val_loss"}
            curves = [
                {"step": h["step"], **{renamed[k]: v for k, v in h.items() if k in renamed}}
                for h in result.history
            ]
            plots.training_curves(curves, figures / "loss.png")
            mlflow.log_artifacts(str(figures), artifact_path="plots")
        summary = {
            "out_dir": str(out),
            **{k: round(v, 4) for k, v in result.metrics().items()},
            "train_examples": result.train_examples,
            "train_rows": result.train_rows,
            "steps": result.steps,
            "lora_layers": len(result.lora_layers),
            "mlflow_run_id": mlflow_run.info.run_id,
            "parent_run_id": parent,
            "model_uri": info.model_uri,
            "registered_version": getattr(info, "registered_model_version", None),
            "seconds": round(result.seconds, 1),
        }
        publish_markdown(
            "finetune-instruct-samples",
            "# Responses to held-out prompts\n\n"
            + "".join(
                f"```\n{s['prompt']}{s['response']}\n```\nreference: {s['reference']}\n\n"
                for s in result.samples
            ),
        )
    print(f"finetune_instruct: {summary}")
    return summary
