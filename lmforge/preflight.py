"""A command's input paths, checked before its flow starts.

A missing, empty or damaged input then fails in a moment, as one line naming it, instead of
after a Prefect flow run and an MLflow run have begun (and Prefect has logged a traceback).
Each check is the stage's own loader, or the cheap first part of it (a checkpoint's config and
weights header, a manifest), so the check and the stage never disagree; the stage checks again.
Outputs are not checked here (each stage claims its own output folder), except training's,
which is refused before the flow starts (`check_out_dir`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lmforge.flows.params import (
    EvalParams,
    FinetuneClassifierParams,
    FinetuneInstructParams,
    PipelineParams,
    ShardParams,
    TrainParams,
)
from lmforge.manifest import read_manifest
from lmforge.model.checkpoint import check_model_dir
from lmforge.model.train import check_out_dir
from lmforge.tasks.evaluate.blimp import load_blimp
from lmforge.tasks.data.dataset_writer import STAGE_NAME as DATA_STAGE
from lmforge.tasks.tokens.shards import STAGE as SHARDS_STAGE
from lmforge.tasks.tokens.shards import TOKENIZER_FILE
from lmforge.tasks.tokens.tokenizer import load_tokenizer


def check_pipeline_inputs(params: PipelineParams) -> None:
    if params.blimp:
        load_blimp(params.blimp)


def check_shard_inputs(params: ShardParams) -> None:
    read_manifest(params.data, stage=DATA_STAGE)
    if params.tokenizer_path:
        load_tokenizer(params.tokenizer_path)


def check_train_inputs(params: TrainParams) -> None:
    read_manifest(params.shards, stage=SHARDS_STAGE)
    check_out_dir(Path(params.out), params.resume)


def check_eval_inputs(params: EvalParams) -> None:
    check_model_dir(params.checkpoint)
    read_manifest(params.shards, stage=SHARDS_STAGE)
    if params.data:
        read_manifest(params.data, stage=DATA_STAGE)
    if params.blimp:
        load_blimp(params.blimp)
    check_benchmark_files(params.tasks or {})
    check_benchmark_files(params.fewshot_from or {})


def check_classifier_inputs(params: FinetuneClassifierParams) -> None:
    from lmforge.tasks.finetune.data import load_labelled_texts

    check_base_model(params.base_model)
    if Path(params.data).is_dir():
        read_manifest(params.data, stage=DATA_STAGE)
    else:
        load_labelled_texts(params.data, params.text_field, params.label_field)


def check_instruct_inputs(params: FinetuneInstructParams) -> None:
    from lmforge.tasks.finetune.data import load_instruction_records

    check_base_model(params.base_model)
    load_instruction_records(params.data)


def check_base_model(path: str) -> None:
    """A model to fine-tune: a finished training output (manifest, weights, tokenizer)."""
    check_model_dir(path)
    read_manifest(path)
    load_tokenizer(Path(path) / TOKENIZER_FILE)


def check_benchmark_files(sources: Mapping[str, str]) -> None:
    """Local benchmark files are read in their task's format; URLs are left to the run."""
    from lmforge.tasks.evaluate.benchmark_formats import benchmark_task
    from lmforge.tasks.evaluate.benchmark_sources import fetch_benchmark_file, is_url

    for name, source in sources.items():
        if not is_url(source):
            task = benchmark_task(name)
            task.load(fetch_benchmark_file(source, sidecars=task.sidecars))
