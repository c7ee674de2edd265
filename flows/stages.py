"""The stages of lmforge, listed once: the pipeline's order, the Prefect deployments and the CLI
commands all come from `STAGES`.

A stage's config sections are not listed here: they are its flow's parameters annotated with a
pydantic model (`lmforge.recipes.flow_sections`), so the flow's signature is their one source.
Flows are named by import path and loaded on use: importing one loads Prefect, MLflow and torch,
which `lmforge --help` and the commands that run no flow should not wait for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Stage:
    """One stage: its flow, where its output goes by default, what it reads, how it is called."""

    name: str  # the flow's name, and the `lmforge.stage` tag of its MLflow runs
    command: str  # the CLI words: "shards build"
    flow_path: str  # "module:function" of the flow
    output: str  # its folder's name: work/<output> by default, <work_dir>/<output> in a pipeline
    inputs: tuple[str, ...]  # the stages whose outputs it reads ("warc": crawl files)
    summary: str  # one line: the command's entry in `lmforge --help`, the deployment's text
    description: str  # the command's --help text
    check_path: str | None = None  # "module:function" checking its inputs before the flow runs
    deployed: bool = True  # registered as a Prefect deployment by `lmforge deploy`
    in_pipeline: bool = False  # a step of `lmforge run`
    # Bare flag names that differ from the field name (field -> flag), e.g. eval's --eval-dir.
    flag_renames: dict[str, str] = field(default_factory=dict)

    def flow(self) -> Callable[..., Any]:
        return _load(self.flow_path)

    def check(self) -> Callable[..., Any] | None:
        return _load(self.check_path) if self.check_path else None

    def sections(self) -> dict[str, type[BaseModel]]:
        """The flow's config sections by parameter name (`train`, `model`, ...)."""
        from lmforge.recipes import flow_sections

        return flow_sections(self.flow())


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


STAGES: tuple[Stage, ...] = (
    Stage(
        name="pipeline",
        command="run",
        flow_path="lmforge.flows.pipeline:pipeline",
        output="pipeline",
        inputs=("warc",),
        summary="WARC files in, evaluated model out: every stage.",
        description="Run the whole pipeline: data refresh, shards, pretraining, evaluation, each "
        "a child MLflow run. With no input it builds an offline sample of WARC files from the "
        "Python interpreter's own documentation.",
        check_path="lmforge.flows.preflight:check_pipeline_inputs",
    ),
    Stage(
        name="data_refresh",
        command="data refresh",
        flow_path="lmforge.flows.data_refresh:data_refresh",
        output="data",
        inputs=("warc",),
        summary="WARC -> filtered, deduplicated Parquet dataset.",
        description="Read WARC responses, extract main text, identify languages, apply quality "
        "filters, remove exact and near duplicates, write docs/ and removed/ as Parquet.",
        in_pipeline=True,
    ),
    Stage(
        name="build_shards",
        command="shards build",
        flow_path="lmforge.flows.build_shards:build_shards",
        output="shards",
        inputs=("data_refresh",),
        summary="Dataset -> BPE tokenizer and token shards.",
        description="Train a byte-level BPE tokenizer on a dataset and write train/val token "
        "shards as Arrow IPC files with a manifest.",
        check_path="lmforge.flows.preflight:check_shard_inputs",
        in_pipeline=True,
    ),
    Stage(
        name="pretrain",
        command="train",
        flow_path="lmforge.flows.pretrain:pretrain",
        output="train",
        inputs=("build_shards",),
        summary="Token shards -> pretrained checkpoint.",
        description="Pretrain a decoder-only transformer on token shards, with resumable "
        "checkpoints in the output folder.",
        check_path="lmforge.flows.preflight:check_train_inputs",
        in_pipeline=True,
    ),
    Stage(
        name="evaluate",
        command="eval",
        flow_path="lmforge.flows.evaluate:evaluate",
        output="eval",
        inputs=("pretrain", "build_shards"),
        summary="Checkpoint -> loss, bits per byte, BLiMP, samples.",
        description="Evaluate a checkpoint: validation loss, perplexity, bits per byte; BLiMP "
        "minimal-pair accuracy with --blimp; benchmarks with --tasks; a few sampled "
        "generations.",
        check_path="lmforge.flows.preflight:check_eval_inputs",
        in_pipeline=True,
        # `--out FILE.json` predates the results folder: the folder is --eval-dir.
        flag_renames={"out": "eval-dir", "results_json": "out"},
    ),
    Stage(
        name="retrain",
        command="retrain",
        flow_path="lmforge.flows.retrain:retrain",
        output="model",
        inputs=("data_refresh",),
        summary="Dataset -> shards, pretrained model, evaluation, gated promotion.",
        description="Retrain on a dataset's newest version (what a refresh's event starts): "
        "build shards, pretrain from scratch or from the current @champion, evaluate, and make "
        "the new model version @champion only if it beats the champion on the model line's "
        "pinned held-out set (else @challenger). Every output has a folder of its own.",
        check_path="lmforge.flows.preflight:check_retrain_inputs",
    ),
    Stage(
        name="finetune_classifier",
        command="finetune classify",
        flow_path="lmforge.flows.finetune:finetune_classifier",
        output="finetune-classifier",
        inputs=("pretrain", "data_refresh"),
        summary="Pretrained model -> text classifier (labels from a file or from URLs).",
        description="Add a classification head on the last token of a pretrained model and "
        "fine-tune it on a labelled CSV/JSONL file (text, label) or on a data-stage directory "
        "labelled by URL section or site; reports held-out accuracy and macro-F1 against the "
        "majority-class baseline and registers the classifier in MLflow.",
        check_path="lmforge.flows.preflight:check_classifier_inputs",
        deployed=False,
    ),
    Stage(
        name="finetune_instruct",
        command="finetune instruct",
        flow_path="lmforge.flows.finetune:finetune_instruct",
        output="finetune-instruct",
        inputs=("pretrain",),
        summary="Pretrained model -> instruction-following model (full or LoRA).",
        description="Fine-tune a pretrained model on instruction records (Alpaca-style "
        "instruction/input/output, or chat messages) with loss on response tokens only; a LoRA "
        "rank above 0 trains adapters and merges them. Generates responses to held-out prompts "
        "and registers the model in MLflow.",
        check_path="lmforge.flows.preflight:check_instruct_inputs",
        deployed=False,
    ),
    Stage(
        name="quality_classifier",
        command="quality train",
        flow_path="lmforge.flows.quality:train_quality_classifier",
        output="quality",
        inputs=("data_refresh",),
        summary="Reference text vs web text -> fastText quality classifier.",
        description="Train a supervised fastText classifier that tells curated reference "
        "text (--positive) from random web text (--negative), as DCLM and FineWeb-Edu train "
        "their quality filters; sources are dataset directories, Parquet (column text) or "
        "JSONL (field text). Reports held-out ROC AUC, precision, recall and F1 and logs the "
        "model to MLflow.",
        check_path="lmforge.flows.quality:check_quality_inputs",
        deployed=False,
    ),
    Stage(
        name="ablation",
        command="ablate",
        flow_path="lmforge.flows.ablation:ablate",
        output="ablation",
        inputs=("warc",),
        summary="Data variants -> the same model trained on each, compared on held-out text.",
        description="Run a data ablation: for a base recipe and named variants of its data "
        "stage, refresh and shard each variant (one tokenizer for all), train the same model "
        "for the same tokens once per seed, score every model on one held-out set (and BLiMP, "
        "benchmarks), and compare each variant with the base against the seed-to-seed spread.",
        check_path="lmforge.flows.ablation:check_ablation_inputs",
    ),
)

# The pipeline's steps, in the order it runs them.
PIPELINE_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.in_pipeline)


def stage_named(name: str) -> Stage:
    """The stage whose flow is `name` (`pretrain`); KeyError for no such stage."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r}: the stages are {', '.join(s.name for s in STAGES)}")
