"""Flow parameters as pydantic models: validated for the CLI, rendered as forms in the Prefect UI.

Defaults here are the built-in demo's: small enough to finish on two CPU cores in minutes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Preset = Literal["tiny", "small", "medium", "1b"]


class StageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataRefreshParams(StageParams):
    input: list[str] = Field(
        default_factory=list,
        description="WARC files or globs. Empty: build the offline sample from the Python docs.",
        json_schema_extra={"position": 0},
    )
    out: str = Field("work/data", description="Directory for the dataset (docs/, removed/).")
    languages: list[str] | None = Field(
        None, description="ISO 639-1 codes to keep (e.g. ['en', 'de']); empty keeps every language."
    )
    min_lang_score: float = Field(
        0.65, ge=0.0, le=1.0, description="Minimum fastText language score to keep a document."
    )
    workers: int = Field(0, ge=0, description="Files processed in parallel; 0 = one per core.")


class ShardParams(StageParams):
    data: str = Field("work/data", description="Dataset directory written by data_refresh.")
    out: str = Field("work/shards", description="Directory for the tokenizer and token shards.")
    vocab_size: int = Field(8192, ge=300, le=1 << 20, description="BPE vocabulary size.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a BPE merge.")
    shard_tokens: int = Field(
        1 << 24, ge=1024, description="Tokens per shard file (the last shard of a split is shorter)."
    )
    val_fraction: float = Field(
        0.05, gt=0.0, lt=0.5, description="Share of documents (by id hash) held out for validation."
    )
    seed: int = Field(0, description="Seed of the document shuffle.")


class TrainParams(StageParams):
    shards: str = Field("work/shards", description="Token shard directory written by build_shards.")
    out: str = Field("work/train", description="Directory for checkpoints and the final model.")
    preset: Preset = Field("tiny", description="Model size: tiny (CPU demo), small (~124M), ...")
    max_steps: int = Field(300, ge=1, description="Optimizer steps of the schedule.")
    batch_size: int = Field(16, ge=1, description="Sequences per optimizer step (per process).")
    seq_len: int | None = Field(None, ge=8, description="Context length; default: the preset's.")
    lr: float = Field(3e-3, gt=0.0, description="Peak learning rate (after warmup).")
    warmup_steps: int | None = Field(
        None, ge=0, description="Linear warmup steps before cosine decay; default: 10% of max_steps."
    )
    eval_every: int = Field(100, ge=1, description="Validation loss every N steps.")
    checkpoint_every: int = Field(100, ge=1, description="Resumable checkpoint every N steps.")
    seed: int = Field(0, description="Seed of initialisation and batch order.")
    resume: bool = Field(False, description="Continue from the newest checkpoint in `out`.")
    stop_after: int | None = Field(
        None, ge=1, description="Checkpoint and stop after N steps of a longer schedule."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")


class EvalParams(StageParams):
    checkpoint: str = Field("work/train", description="Training output or checkpoint directory.")
    shards: str = Field("work/shards", description="Token shard directory (validation split).")
    out: str | None = Field(
        None, description="Directory for results.json and its manifest (default: eval/ beside the checkpoint)."
    )
    results_json: str | None = Field(None, description="Also write the results to this JSON file.")
    blimp: str | None = Field(None, description="Directory of BLiMP JSONL files to score.")
    blimp_max_pairs: int | None = Field(
        None, ge=1, description="Pairs per BLiMP paradigm (default: all)."
    )
    max_val_tokens: int = Field(
        1 << 20, ge=1, description="Validation tokens to evaluate (the split is cut there)."
    )
    prompts: list[str] = Field(
        default_factory=lambda: ["The Python interpreter", "A list comprehension", "import "],
        description="Prompts for sampled generations.",
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens generated per prompt.")


class PipelineParams(StageParams):
    input: list[str] = Field(
        default_factory=list,
        description="WARC files or globs. Empty: build the offline sample from the Python docs.",
        json_schema_extra={"position": 0},
    )
    work_dir: str = Field("work/pipeline", description="Every stage writes a subdirectory here.")
    blimp: str | None = Field(None, description="Directory of BLiMP JSONL files to score.")
    languages: list[str] | None = Field(None, description="Languages to keep; empty keeps all.")
    vocab_size: int = Field(8192, ge=300, description="BPE vocabulary size.")
    preset: Preset = Field("tiny", description="Model size.")
    max_steps: int = Field(300, ge=1, description="Training steps.")
    batch_size: int = Field(16, ge=1, description="Sequences per optimizer step.")
    seq_len: int | None = Field(None, ge=8, description="Context length; default: the preset's.")
    seed: int = Field(0, description="Seed for the shuffle, initialisation and batch order.")
