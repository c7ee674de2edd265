"""Flow parameters as pydantic models: validated for the CLI, rendered as forms in the Prefect UI.

Defaults here are the built-in demo's: small enough to finish on two CPU cores in minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

class StageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataRefreshRun(StageParams):
    """Where `data_refresh` reads and writes, and where its per-file work runs."""

    input: list[str] = Field(
        default_factory=list,
        description="WARC files or globs. Empty: build the offline sample from the Python docs.",
        json_schema_extra={"position": 0},
    )
    out: str = Field("work/data", description="Directory for the dataset (docs/, removed/).")
    crawl: str | None = Field(
        None,
        description="Common Crawl id (e.g. CC-MAIN-2025-08): stream WARC files of that crawl "
        "(its warc.paths.gz listing), added to `input`.",
    )
    max_files: int | None = Field(
        None, ge=1, description="Read only the first N WARC files of `crawl`."
    )
    files_per_run: int | None = Field(
        None,
        ge=1,
        description="Add only the next N input files the dataset has not processed yet (a "
        "scheduled refresh advances through a crawl's listing run by run); empty: all of them.",
    )
    crawl_base_url: str = Field(
        "https://data.commoncrawl.org/",
        description="Where crawl listings and WARC files are served (a mirror, or a test server).",
    )
    workers: int = Field(0, ge=0, description="Files processed in parallel; 0 = one per core.")
    runner: Literal["local", "dask", "threads"] = Field(
        "local",
        description="Where per-file work runs: local (a process per worker on this machine), "
        "dask (a Dask cluster: dask_address, or a LocalCluster started for the run), or threads "
        "(in this process; for small inputs).",
    )
    dask_address: str | None = Field(
        None,
        description="Address of a running Dask scheduler (e.g. tcp://10.0.0.5:8786) for "
        "runner=dask; empty starts a LocalCluster with `workers` processes.",
    )
    extraction_cache: str | None = Field(
        None,
        description="Directory keeping each file's early work (read checks, URL filter, "
        "extraction, language ID) for refreshes that differ only in later settings (an "
        "ablation's variants); empty: not kept.",
    )
    # Where dedup runs, not what it keeps (results are identical): orchestration, so not part
    # of DataConfig, whose equality decides whether a refresh continues a dataset.
    distributed_dedup: bool = Field(
        False,
        description="Deduplicate on the Dask cluster (runner=dask) in partitioned stages, with "
        "the results of one process; off: chosen on its own from distributed_dedup_above new "
        "documents.",
    )
    distributed_dedup_above: int = Field(
        5_000_000,
        ge=1,
        description="New documents from which a runner=dask refresh deduplicates on the "
        "cluster; below, in the flow's process (no cluster start-up).",
    )
    dedup_worker_memory_mib: int = Field(
        2048,
        ge=64,
        description="Memory per Dask worker that the distributed dedup sizes its partitions "
        "for (MiB); more data means more partitions, not more memory.",
    )

    @model_validator(mode="after")
    def _distributed_dedup_needs_dask(self) -> DataRefreshRun:
        if self.distributed_dedup and self.runner != "dask":
            raise ValueError(
                f"distributed_dedup runs on Dask: pass runner=dask (got runner={self.runner})"
            )
        return self

    def input_files(self) -> list[Path | str]:
        """`input` and the first `max_files` files of `crawl`, resolved (local paths as Paths,
        URLs as strings); see `lmforge.tasks.data.inputs.resolve_inputs` for the errors."""
        from lmforge.tasks.data.inputs import resolve_inputs

        return resolve_inputs(self.input, self.crawl, self.max_files, self.crawl_base_url)


class ShardsRun(StageParams):
    """Where `build_shards` reads the dataset and writes the tokenizer and shards."""

    data: str = Field("work/data", description="Dataset directory written by data_refresh.")
    out: str = Field("work/shards", description="Directory for the tokenizer and token shards.")


class PretrainRun(StageParams):
    """Where `pretrain` reads and writes, how many processes train, and where the model is
    registered."""

    shards: str = Field("work/shards", description="Token shard directory written by build_shards.")
    out: str = Field("work/train", description="Directory for checkpoints and the final model.")
    nproc: int = Field(1, ge=1, description="Training processes per machine (torchrun).")
    isolate: bool = Field(
        False,
        description="Train in a child process even as one process (torchrun): runs side by side "
        "share no interpreter.",
    )
    nnodes: int = Field(1, ge=1, description="Machines taking part (torchrun --nnodes).")
    node_rank: int = Field(0, ge=0, description="This machine's rank among nnodes.")
    rdzv_endpoint: str | None = Field(
        None, description="HOST:PORT of node 0, where the machines meet (several nodes)."
    )
    register_model: bool = Field(
        True, description="Log the trained model to MLflow and register it in the Model Registry."
    )
    registered_model_name: str | None = Field(
        None, description="Model Registry name; default: lmforge-<preset>."
    )
    model_alias: str | None = Field(
        "candidate", description="Registry alias moved to the new version; empty: none."
    )

    @model_validator(mode="after")
    def _check_node_rank(self) -> PretrainRun:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank={self.node_rank} must be below nnodes={self.nnodes}")
        return self


class EvalRun(StageParams):
    """What `evaluate` scores and where it writes the results."""

    checkpoint: str = Field("work/train", description="Training output or checkpoint directory.")
    shards: str = Field("work/shards", description="Token shard directory (validation split).")
    out: str | None = Field(
        None,
        description="Directory for results.json and its manifest (default: eval/ beside the "
        "checkpoint).",
    )
    results_json: str | None = Field(None, description="Also write the results to this JSON file.")
    blimp: str | None = Field(None, description="Directory of BLiMP JSONL files to score.")
    data: str | None = Field(
        None,
        description="Data directory the shards were built from, for per-language metrics "
        "(default: the one the shards' manifest names).",
    )
    benchmark_cache: str | None = Field(
        None, description="Directory for downloaded benchmark files (default: ~/.cache/lmforge)."
    )


class PipelineRun(StageParams):
    """What the whole pipeline reads, where its stages write, and where its work runs."""

    input: list[str] = Field(
        default_factory=list,
        description="WARC files or globs. Empty: build the offline sample from the Python docs.",
        json_schema_extra={"position": 0},
    )
    work_dir: str = Field(
        "work/pipeline", description="Every stage writes a subdirectory here (data, shards, ...)."
    )
    blimp: str | None = Field(None, description="Directory of BLiMP JSONL files to score.")
    workers: int = Field(0, ge=0, description="WARC files processed in parallel; 0 = one per core.")
    runner: Literal["local", "dask", "threads"] = Field(
        "local", description="Where per-file data work runs: local processes, dask or threads."
    )
    dask_address: str | None = Field(
        None, description="Address of a running Dask scheduler for runner=dask."
    )
    register_model: bool = Field(
        True, description="Register the trained model in the MLflow Model Registry."
    )
    registered_model_name: str | None = Field(
        None, description="Model Registry name; default: lmforge-<preset>."
    )
    model_alias: str | None = Field(
        "candidate", description="Registry alias moved to the new version; empty: none."
    )


class RetrainRun(StageParams):
    """What a retrain reads (a dataset that refreshes grow), where its stages write, how it
    starts, and the model line it adds a version to."""

    dataset: str = Field(
        "work/dataset",
        description="Dataset folder a data_refresh writes (its newest version is trained on).",
        json_schema_extra={"position": 0},
    )
    work_dir: str = Field(
        "work/model",
        description="Shards, training and evaluation folders, one per run (stages/...), with "
        "links to the newest (shards, train, eval).",
    )
    start: Literal["scratch", "champion"] = Field(
        "scratch",
        description="scratch: a new tokenizer and random weights; champion: continue from the "
        "current @champion's weights with its tokenizer (same model shape).",
    )
    blimp: str | None = Field(None, description="Directory of BLiMP JSONL files to score.")
    nproc: int = Field(1, ge=1, description="Training processes (torchrun).")
    registered_model_name: str | None = Field(
        None, description="Model line (Model Registry name); default: lmforge-<preset>."
    )


class FinetuneClassifierRun(StageParams):
    """What `finetune_classifier` starts from and learns on, where it writes, and the registry
    name of the result."""

    base_model: str = Field(
        "work/train", description="Pretrained model directory (a training output) to start from."
    )
    data: str = Field(
        "work/data",
        description="Labelled CSV/JSONL file (text, label), or a data-stage directory whose "
        "labels are derived from the URLs (see label_from).",
    )
    out: str = Field("work/finetune-classifier", description="Directory for the classifier.")
    registered_model_name: str | None = Field(
        "lmforge-classifier",
        description="MLflow Model Registry name for the result; empty: do not register.",
    )


class FinetuneInstructRun(StageParams):
    """What `finetune_instruct` starts from and learns on, where it writes, and the registry
    name of the result."""

    base_model: str = Field(
        "work/train", description="Pretrained model directory (a training output) to start from."
    )
    data: str = Field(
        description="JSONL of Alpaca-style records (instruction, input, output) or chat records "
        "({\"messages\": [{\"role\", \"content\"}, ...]}).",
        json_schema_extra={"position": 0},
    )
    out: str = Field("work/finetune-instruct", description="Directory for the fine-tuned model.")
    registered_model_name: str | None = Field(
        "lmforge-instruct",
        description="MLflow Model Registry name for the result; empty: do not register.",
    )


class QualityTrainRun(StageParams):
    """What `quality_classifier` learns from (positive and negative sources) and where it
    writes the model."""

    positive: list[str] = Field(
        min_length=1,
        description="Curated reference text (the class to keep): lmforge dataset directories, "
        "Parquet files or folders of them (column text), JSONL files (field text).",
    )
    negative: list[str] = Field(
        min_length=1,
        description="Random or junk web text (the class to drop), in the same formats.",
    )
    out: str = Field(
        "work/quality", description="Directory for model.bin, metrics.json and the manifest."
    )


class AblationRun(StageParams):
    """What a data ablation reads, where its variants write, and how many run at once."""

    input: list[str] = Field(
        default_factory=list,
        description="WARC files or globs. Empty: build the offline sample from the Python docs.",
        json_schema_extra={"position": 0},
    )
    out: str = Field(
        "work/ablation",
        description="Folder of the ablation: variants/<name>/{data,shards,train-seedK,eval-seedK}, "
        "comparison/ (table, results, plots) and the MLflow store.",
    )
    blimp: str | None = Field(None, description="Directory of BLiMP JSONL files to score.")
    parallel: int = Field(2, ge=1, description="Variants worked on at once.")
    train_threads: int = Field(
        0, ge=0,
        description="Torch threads of each training process; 0: OMP_NUM_THREADS if set, else "
        "the cores divided among the parallel variants.",
    )  # fmt: skip
    workers: int = Field(0, ge=0, description="WARC files processed in parallel; 0 = one per core.")
    runner: Literal["local", "dask", "threads"] = Field(
        "local", description="Where per-file data work runs: local processes, dask or threads."
    )
    dask_address: str | None = Field(
        None, description="Address of a running Dask scheduler for runner=dask."
    )
