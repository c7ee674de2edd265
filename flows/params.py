"""Flow parameters as pydantic models: validated for the CLI, rendered as forms in the Prefect UI.

Defaults here are the built-in demo's: small enough to finish on two CPU cores in minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # imported where used: the CLI builds its options without loading the tasks
    from lmforge.tasks.data.config import DataConfig

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
    min_lang_scores: dict[str, float] | None = Field(
        None,
        description="Per-language minimum scores overriding min_lang_score, e.g. ja=0.5,en=0.7.",
    )
    crawl: str | None = Field(
        None,
        description="Common Crawl id (e.g. CC-MAIN-2025-08): stream WARC files of that crawl "
        "(its warc.paths.gz listing), added to `input`.",
    )
    max_files: int | None = Field(
        None, ge=1, description="Read only the first N WARC files of `crawl`."
    )
    crawl_base_url: str = Field(
        "https://data.commoncrawl.org/",
        description="Where crawl listings and WARC files are served (a mirror, or a test server).",
    )
    extractor: Literal["resiliparse", "trafilatura"] = Field(
        "resiliparse",
        description="Main-content extractor: resiliparse (fast) or trafilatura (needs the "
        "trafilatura extra).",
    )
    lang_model: str | None = Field(
        None,
        description="fastText language-ID model file: lid.176.bin or a GlotLID model; empty uses "
        "the bundled lid.176.ftz.",
    )
    blocked_domains: list[str] = Field(
        default_factory=list,
        description="Files of domains to drop (one per line; subdomains too), added to the "
        "default list.",
    )
    blocked_urls: list[str] = Field(
        default_factory=list, description="Files of URLs to drop (one per line)."
    )
    banned_url_words: list[str] = Field(
        default_factory=list,
        description="Files of words that drop a URL containing them as a word, added to the "
        "default list.",
    )
    default_url_lists: bool = Field(
        True, description="Use the URL block lists shipped with lmforge besides your own."
    )
    dedup_shingle_language: Literal["detected", "declared"] = Field(
        "detected",
        description="Which language decides how dedup shingles a page (characters for zh, ja, "
        "ko, th; words otherwise): detected from its text, or declared by the page (header, "
        "<html lang>, a locale in its URL), falling back to the detected one.",
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

    @field_validator("min_lang_scores", mode="before")
    @classmethod
    def _parse_min_lang_scores(cls, value: object) -> object:
        return parse_language_mapping(value, "min_lang_scores")

    def data_config(self) -> DataConfig:
        """The `DataConfig` these parameters describe (what decides which documents are kept)."""
        from lmforge.tasks.data.config import DataConfig
        from lmforge.tasks.data.dedup import MinHashConfig
        from lmforge.tasks.data.filters import URLFilter
        from lmforge.tasks.data.html_text import ExtractionConfig

        return DataConfig(
            languages=tuple(self.languages) if self.languages else None,
            min_lang_score=self.min_lang_score,
            min_lang_scores=self.min_lang_scores,
            extraction=ExtractionConfig(extractor=self.extractor),
            url_filter=URLFilter(
                blocked_domain_files=tuple(self.blocked_domains),
                blocked_url_files=tuple(self.blocked_urls),
                banned_word_files=tuple(self.banned_url_words),
                use_default_lists=self.default_url_lists,
            ),
            lang_model_path=self.lang_model,
            minhash=MinHashConfig(shingle_language=self.dedup_shingle_language),
        )

    def input_files(self) -> list[Path | str]:
        """`input` and the first `max_files` files of `crawl`, resolved (local paths as Paths,
        URLs as strings); see `lmforge.tasks.data.inputs.resolve_inputs` for the errors."""
        from lmforge.tasks.data.inputs import resolve_inputs

        return resolve_inputs(self.input, self.crawl, self.max_files, self.crawl_base_url)


def parse_language_mapping(value: object, field: str) -> object:
    """`en=0.7,ja=0.5` (the CLI's one string) -> {"en": "0.7", "ja": "0.5"} for pydantic to
    type; a mapping (the UI, Python) passes through."""
    if not isinstance(value, str):
        return value
    mapping = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        lang, sep, number = entry.partition("=")
        if not sep or not lang.strip():
            raise ValueError(f"{field} entry {entry!r} is not LANG=VALUE (e.g. en=0.7,ja=0.5)")
        mapping[lang.strip()] = number.strip()
    return mapping


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
    tokenizer_path: str | None = Field(
        None, description="Reuse this tokenizer.json instead of training one (skips BPE training)."
    )
    sample_bytes: int = Field(
        1 << 28, ge=1, description="Cap on the UTF-8 bytes of text the tokenizer trains on."
    )
    language_temperature: float = Field(
        3.0,
        gt=0.0,
        description="Tokenizer sample share per language ~ bytes^(1/T): 1 keeps the data's mix, "
        "larger flattens it so a dominant language does not swamp the vocabulary.",
    )
    language_weights: dict[str, float] | None = Field(
        None,
        description="Explicit tokenizer sample shares, e.g. en=2,de=1 (languages not named are "
        "left out); overrides language_temperature.",
    )
    max_repeats: int = Field(
        4, ge=1, description="Most times a small language's documents repeat in the sample."
    )
    sample_seed: int = Field(0, ge=0, description="Seed of the tokenizer sample.")

    @field_validator("language_weights", mode="before")
    @classmethod
    def _parse_language_weights(cls, value: object) -> object:
        # The CLI hands over one string, `en=2,de=1`; the UI and Python hand over a mapping.
        if not isinstance(value, str):
            return value
        weights: dict[str, str] = {}
        for entry in filter(None, (part.strip() for part in value.split(","))):
            lang, sep, weight = entry.partition("=")
            if not sep or not lang.strip():
                raise ValueError(f"language weight {entry!r} is not LANG=WEIGHT (e.g. en=2,de=1)")
            weights[lang.strip()] = weight.strip()
        return weights


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
    strategy: Literal["single", "ddp", "fsdp", "pipeline"] | None = Field(
        None,
        description="Parallelism: single process, ddp, fsdp (FSDP2) or pipeline; "
        "default: single for one process, ddp for several.",
    )
    nproc: int = Field(1, ge=1, description="Training processes per machine (torchrun).")
    nnodes: int = Field(1, ge=1, description="Machines taking part (torchrun --nnodes).")
    node_rank: int = Field(0, ge=0, description="This machine's rank among nnodes.")
    rdzv_endpoint: str | None = Field(
        None, description="HOST:PORT of node 0, where the machines meet (several nodes)."
    )
    compile: bool = Field(False, description="torch.compile each transformer block.")
    activation_checkpointing: bool = Field(
        False, description="Recompute block activations in the backward pass to save memory."
    )
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    microbatches: int = Field(
        2, ge=1, description="Pipeline micro-batches per batch (strategy pipeline)."
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
    max_tokens_per_language: int = Field(
        1 << 16,
        ge=0,
        description="Validation tokens per language for per-language loss / bits per byte "
        "(whole documents; 0: off).",
    )
    data: str | None = Field(
        None,
        description="Data directory the shards were built from, for per-language metrics "
        "(default: the one the shards' manifest names).",
    )
    prompts: list[str] = Field(
        default_factory=lambda: ["The Python interpreter", "A list comprehension", "import "],
        description="Prompts for sampled generations.",
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens generated per prompt.")
    tasks: dict[str, str] | None = Field(
        None,
        description="Benchmarks as NAME=PATH_OR_URL, comma-separated: hellaswag, arc_easy, "
        "arc_challenge, piqa, lambada (e.g. hellaswag=hellaswag_val.jsonl,arc_easy=ARC-Easy-"
        "Test.jsonl); a bare NAME downloads the published file.",
    )
    num_fewshot: int = Field(0, ge=0, description="Solved examples before each benchmark question.")
    fewshot_from: dict[str, str] | None = Field(
        None,
        description="NAME=PATH_OR_URL of a train/validation file to draw few-shot examples from "
        "(default: the task's own file, without the question).",
    )
    fewshot_seed: int = Field(1234, description="Seed of the few-shot example draw.")
    benchmark_limit: int | None = Field(
        None, ge=1, description="Score only the first N questions of each benchmark."
    )
    benchmark_cache: str | None = Field(
        None, description="Directory for downloaded benchmark files (default: ~/.cache/lmforge)."
    )

    @field_validator("tasks", "fewshot_from", mode="before")
    @classmethod
    def _parse_task_sources(cls, value: object) -> object:
        # The CLI hands over one string, `hellaswag=PATH,arc_easy`; the UI and Python a mapping.
        if not isinstance(value, str):
            return value
        from lmforge.tasks.evaluate.benchmark_formats import benchmark_task

        sources = {}
        for entry in filter(None, (part.strip() for part in value.split(","))):
            name, sep, source = (part.strip() for part in entry.partition("="))
            if sep and not source:
                raise ValueError(f"benchmark {name!r} has an empty source: NAME=PATH_OR_URL")
            sources[name] = source or benchmark_task(name).url
        return sources


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


class FinetuneClassifierParams(StageParams):
    base_model: str = Field(
        "work/train", description="Pretrained model directory (a training output) to start from."
    )
    data: str = Field(
        "work/data",
        description="Labelled CSV/JSONL file (text, label), or a data-stage directory whose "
        "labels are derived from the URLs (see label_from).",
    )
    out: str = Field("work/finetune-classifier", description="Directory for the classifier.")
    label_from: Literal["section", "site"] = Field(
        "section",
        description="For a data-stage directory: label by the URL's section (the page's "
        "directory, e.g. reference/library) or by site (the host).",
    )
    text_field: str = Field("text", description="Text column/field of a labelled file.")
    label_field: str = Field("label", description="Label column/field of a labelled file.")
    max_len: int | None = Field(
        256, ge=2, description="Tokens per text (the start is kept); default: the model's context."
    )
    epochs: int = Field(3, ge=1, description="Passes over the training split.")
    batch_size: int = Field(16, ge=1, description="Texts per optimizer step.")
    lr: float = Field(5e-4, gt=0.0, description="Peak learning rate (warmup, then cosine decay).")
    trainable_blocks: int | None = Field(
        None,
        ge=0,
        description="Train only the head, final norm and the last N blocks; default: all.",
    )
    val_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of every class held out for accuracy and macro-F1."
    )
    seed: int = Field(0, description="Seed of the split, the head's init and the batch order.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    registered_model_name: str | None = Field(
        "lmforge-classifier",
        description="MLflow Model Registry name for the result; empty: do not register.",
    )


class FinetuneInstructParams(StageParams):
    base_model: str = Field(
        "work/train", description="Pretrained model directory (a training output) to start from."
    )
    data: str = Field(
        description="JSONL of Alpaca-style records (instruction, input, output) or chat records "
        "({\"messages\": [{\"role\", \"content\"}, ...]}).",
        json_schema_extra={"position": 0},
    )
    out: str = Field("work/finetune-instruct", description="Directory for the fine-tuned model.")
    max_len: int | None = Field(
        None, ge=8, description="Tokens per example and per packed row; default: model context."
    )
    pack: bool = Field(True, description="Pack several examples into each row (fewer pad tokens).")
    epochs: int = Field(3, ge=1, description="Passes over the training records.")
    batch_size: int = Field(8, ge=1, description="Rows per optimizer step.")
    lr: float = Field(3e-4, gt=0.0, description="Peak learning rate (warmup, then cosine decay).")
    lora_rank: int = Field(
        0, ge=0, description="LoRA rank; 0 fine-tunes every weight, > 0 trains adapters only."
    )
    lora_alpha: float = Field(16.0, gt=0.0, description="LoRA scale: updates scale by alpha/rank.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["qkv", "out_proj"],
        description="Linear layers to adapt, by name (qkv, out_proj, gate_up, up, down).",
    )
    val_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="Share of records held out for loss and sample responses."
    )
    num_samples: int = Field(5, ge=0, description="Held-out prompts answered after training.")
    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per sample response.")
    seed: int = Field(0, description="Seed of the split and batch order.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    registered_model_name: str | None = Field(
        "lmforge-instruct",
        description="MLflow Model Registry name for the result; empty: do not register.",
    )
