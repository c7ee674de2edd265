"""A command's input paths, checked before its flow starts.

A missing, empty or damaged input then fails in a moment, as one line naming it, instead of
after a Prefect flow run and an MLflow run have begun (and Prefect has logged a traceback).
Each check is the stage's own loader, or the cheap first part of it (a checkpoint's config and
weights header, a manifest), so the check and the stage never disagree; the stage checks again.
Outputs are not checked here (each stage claims its own output folder), except training's,
which is refused before the flow starts (`check_out_dir`).

It lives with the flows because it checks their run sections (`PretrainRun`, ...) and the stage
registry (`lmforge.flows.stages`) names each check; `lmforge/` stays free of flow imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.flows.params import (
    EvalRun,
    FinetuneClassifierRun,
    FinetuneInstructRun,
    PipelineRun,
    PretrainRun,
    RetrainRun,
    ShardsRun,
)
from lmforge.manifest import read_manifest
from lmforge.model.checkpoint import check_model_dir
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.model.train import TrainConfig, check_out_dir
from lmforge.tasks.evaluate.blimp import load_blimp
from lmforge.tasks.evaluate.checkpoint import EvalConfig
from lmforge.tasks.data.dataset_writer import STAGE_NAME as DATA_STAGE
from lmforge.tasks.tokens.shards import STAGE as SHARDS_STAGE
from lmforge.tasks.tokens.shards import ShardConfig
from lmforge.tasks.tokens.tokenizer import load_tokenizer

if TYPE_CHECKING:  # the fine-tuning modules load when a fine-tuning command runs
    from lmforge.tasks.finetune.classify import ClassifierConfig


def check_pipeline_inputs(eval: EvalConfig, run: PipelineRun, **sections: object) -> None:
    check_evaluation_files(eval, run.blimp)


def check_shard_inputs(shards: ShardConfig, run: ShardsRun) -> None:
    read_manifest(run.data, stage=DATA_STAGE)
    if shards.tokenizer_path:
        load_tokenizer(shards.tokenizer_path)


def check_retrain_inputs(
    shards: ShardConfig, eval: EvalConfig, run: RetrainRun, **sections: object
) -> None:
    read_manifest(run.dataset, stage=DATA_STAGE)
    if shards.tokenizer_path:
        load_tokenizer(shards.tokenizer_path)
    check_evaluation_files(eval, run.blimp)


def check_train_inputs(train: TrainConfig, run: PretrainRun, **sections: object) -> None:
    read_manifest(run.shards, stage=SHARDS_STAGE)
    check_out_dir(Path(run.out), train.resume)


def check_eval_inputs(eval: EvalConfig, run: EvalRun) -> None:
    check_model_dir(run.checkpoint)
    read_manifest(run.shards, stage=SHARDS_STAGE)
    if run.data:
        read_manifest(run.data, stage=DATA_STAGE)
    check_evaluation_files(eval, run.blimp)


def check_classifier_inputs(finetune: ClassifierConfig, run: FinetuneClassifierRun) -> None:
    from lmforge.tasks.finetune.data import load_labelled_texts

    check_base_model(run.base_model)
    if Path(run.data).is_dir():
        read_manifest(run.data, stage=DATA_STAGE)
    else:
        load_labelled_texts(run.data, finetune.text_field, finetune.label_field)


def check_instruct_inputs(run: FinetuneInstructRun, **sections: object) -> None:
    from lmforge.tasks.finetune.data import load_instruction_records

    check_base_model(run.base_model)
    load_instruction_records(run.data)


def check_base_model(path: str) -> None:
    """A model to fine-tune: a finished training output (manifest, weights, tokenizer)."""
    check_model_dir(path)
    read_manifest(path)
    load_tokenizer(Path(path) / TOKENIZER_FILE)


def check_evaluation_files(eval: EvalConfig, blimp: str | None) -> None:
    """What an evaluation reads besides the model: BLiMP pairs and local benchmark files."""
    if blimp:
        load_blimp(blimp)
    check_benchmark_files(eval.tasks or {})
    check_benchmark_files(eval.fewshot_from or {})


def check_benchmark_files(sources: Mapping[str, str]) -> None:
    """Local benchmark files are read in their task's format; URLs are left to the run."""
    from lmforge.tasks.evaluate.benchmark_formats import benchmark_task
    from lmforge.tasks.evaluate.benchmark_sources import fetch_benchmark_file, is_url

    for name, source in sources.items():
        if not is_url(source):
            task = benchmark_task(name)
            task.load(fetch_benchmark_file(source, sidecars=task.sidecars))
