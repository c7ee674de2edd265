"""`finetune_classifier`, `finetune_instruct`: fine-tune a pretrained checkpoint, tracked in MLflow.

Each run is a child of the base model's MLflow run (found by the `lmforge.output_dir` tag that the
pretrain stage sets, or given as `parent_run_id`), tagged with the base checkpoint's path and
manifest digest, and registers its result in the MLflow Model Registry. The registered model is
the network's forward pass exported with `torch.export` (MLflow's pickle-free "pt2" format): it
maps right-padded token ids [batch, max_len] to class logits, or to next-token logits; the
output directory's safetensors files are what `lmforge.model` loads to generate.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import flow, task

from lmforge.flows.params import FinetuneClassifierParams, FinetuneInstructParams
from lmforge.flows.reports import publish_markdown, publish_table
from lmforge.flows.registry import example_ids, log_pt2_model
from lmforge.flows.tracking import (
    MetricsLogger,
    configure_tracking,
    find_stage_run,
    log_stage_manifest,
    stage_run,
)
from lmforge.manifest import manifest_digest
from lmforge.model.checkpoint import load_model
from lmforge.model.classifier import load_classifier
from lmforge.tasks import plots
from lmforge.tasks.finetune.classify import (
    ClassifierConfig,
    ClassifierResult,
    claim_classifier_output,
)
from lmforge.tasks.finetune.classify import finetune_classifier as train_classifier
from lmforge.tasks.finetune.instruct import InstructConfig, InstructResult, claim_instruct_output
from lmforge.tasks.finetune.instruct import finetune_instruct as train_instruct


def base_model_lineage(
    base_model: str, parent_run_id: str | None
) -> tuple[str | None, dict[str, str]]:
    """The parent for the fine-tuning run and the tags that name its base model.

    Parent: `parent_run_id` if given; else the base model's run, unless a run is already active
    (a pipeline's), which then stays the parent and the base run is recorded as a tag.
    """
    base = Path(base_model).resolve()
    tags = {"lmforge.base_model": str(base), "lmforge.base_model_digest": manifest_digest(base)}
    found = find_stage_run(base)
    base_run = found.info.run_id if found else None
    if base_run:
        tags["lmforge.base_run_id"] = base_run
    parent = parent_run_id or (None if mlflow.active_run() else base_run)
    return parent, tags


@task(name="finetune-classifier")
def classifier_task(config: ClassifierConfig, run_id: str) -> ClassifierResult:
    return train_classifier(config, on_log=MetricsLogger(run_id))


@task(name="finetune-instruct")
def instruct_task(config: InstructConfig, run_id: str) -> InstructResult:
    return train_instruct(config, on_log=MetricsLogger(run_id))


def classifier_config(params: FinetuneClassifierParams) -> ClassifierConfig:
    return ClassifierConfig(
        base_model=params.base_model,
        data=params.data,
        out_dir=params.out,
        label_from=params.label_from,
        text_field=params.text_field,
        label_field=params.label_field,
        max_len=params.max_len,
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        trainable_blocks=params.trainable_blocks,
        val_fraction=params.val_fraction,
        seed=params.seed,
        device=params.device,
    )


def instruct_config(params: FinetuneInstructParams) -> InstructConfig:
    return InstructConfig(
        base_model=params.base_model,
        data=params.data,
        out_dir=params.out,
        max_len=params.max_len,
        pack=params.pack,
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        lora_rank=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        lora_targets=tuple(params.lora_targets),
        val_fraction=params.val_fraction,
        num_samples=params.num_samples,
        max_new_tokens=params.max_new_tokens,
        seed=params.seed,
        device=params.device,
    )


@flow(name="finetune_classifier", log_prints=True)
def finetune_classifier(
    params: FinetuneClassifierParams = FinetuneClassifierParams(), parent_run_id: str | None = None
) -> dict:
    """Fine-tune a pretrained checkpoint as a text classifier; report held-out accuracy and
    macro-F1 against the majority baseline, and register the classifier."""
    out = Path(params.out).resolve()
    config = classifier_config(params)
    claim_classifier_output(config)  # before any work
    configure_tracking(out.parent, keep_existing=True)
    parent, tags = base_model_lineage(params.base_model, parent_run_id)
    with stage_run("finetune_classifier", params.model_dump(), parent) as run:
        mlflow.set_tags(tags)
        result = classifier_task(config, run.info.run_id)
        log_stage_manifest(out, context="training")
        classifier, labels = load_classifier(out)
        context = classifier.base.config.max_seq_len
        max_len = min(config.max_len or context, context)
        info = log_pt2_model(
            classifier,
            example_ids(max_len, classifier.pad_id),
            "classifier",
            params.registered_model_name,
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
            "mlflow_run_id": run.info.run_id,
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
def finetune_instruct(params: FinetuneInstructParams, parent_run_id: str | None = None) -> dict:
    """Supervised instruction fine-tuning (full or LoRA) of a pretrained checkpoint; logs the
    held-out response-token loss and generated responses, and registers the model."""
    out = Path(params.out).resolve()
    config = instruct_config(params)
    claim_instruct_output(config)  # before any work
    configure_tracking(out.parent, keep_existing=True)
    parent, tags = base_model_lineage(params.base_model, parent_run_id)
    with stage_run("finetune_instruct", params.model_dump(), parent) as run:
        mlflow.set_tags(tags)
        result = instruct_task(config, run.info.run_id)
        log_stage_manifest(out, context="training")
        model = load_model(out)
        info = log_pt2_model(
            model, example_ids(model.config.max_seq_len), "model", params.registered_model_name
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
            "mlflow_run_id": run.info.run_id,
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
