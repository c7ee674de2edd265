"""Evaluation of a trained model: validation loss / perplexity / bits per byte (overall and per
language), BLiMP, samples.

The scoring functions accept any causal language model with `forward(idx: LongTensor[B, T]) ->
logits[B, T, V]` (and `generate(...)` for samples, per the Model API contract), so they can be
tested with stand-in models; `evaluate_checkpoint` wires them to a saved checkpoint and shards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tokenizers import Tokenizer

from lmforge.errors import LmforgeError
from lmforge.manifest import read_manifest
from lmforge.model.checkpoint import load_model
from lmforge.model.data import TokenSplit, open_token_split, sequential_windows
from lmforge.model.runtime import resolve_device
from lmforge.model.shard_format import SHARD_PATTERN, TOKENIZER_FILE
from lmforge.tasks.evaluate.benchmark_formats import benchmark_task
from lmforge.tasks.evaluate.blimp import MinimalPair, load_blimp
from lmforge.tasks.data.dataset_versions import (
    UNKNOWN_LANGUAGE,
    dataset_doc_files,
    document_batches,
    has_dataset,
)
from lmforge.tasks.tokens.shards import STAGE as SHARDS_STAGE
from lmforge.tasks.tokens.shards import is_validation_document
from lmforge.tasks.tokens.tokenizer import (
    load_tokenizer,
    special_token_ids,
    to_valid_utf8,
    tokenizer_sha256,
    tokenizer_vocab_size,
)

DEFAULT_PROMPTS = ("The Python interpreter", "A list comprehension", "import ")
IGNORE_INDEX = -100  # cross_entropy's marker for positions that carry no loss (padding)

log = logging.getLogger(__name__)


class EvaluationError(LmforgeError, ValueError):
    """A checkpoint, tokenizer and shards that do not belong together, or unusable settings."""


def model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


# --- validation loss and bits per byte ---------------------------------------------------------


def batched(windows: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stack consecutive windows (all of one length) into arrays of up to `batch_size` rows."""
    batch: list[np.ndarray] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


@torch.inference_mode()
def window_loss(
    model: torch.nn.Module, windows: Iterable[np.ndarray], batch_size: int
) -> tuple[float, int]:
    """Total next-token loss in nats, and the number of predicted tokens, over token windows.

    Each window holds T+1 token ids: the model reads the first T and is scored on the last T.
    """
    device = model_device(model)
    total_nats, predicted = 0.0, 0
    for batch in batched(windows, batch_size):
        tokens = torch.from_numpy(batch.astype(np.int64)).to(device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = model(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        total_nats += loss.item()
        predicted += targets.numel()
    return total_nats, predicted


def language_model_metrics(
    total_nats: float, tokens: int, bytes_per_token: float
) -> dict[str, float]:
    """val_loss (nats/token), val_ppl, val_bpb and val_tokens from a summed loss.

    Bits per byte divides the loss by the UTF-8 bytes of the text the tokens stand for; the
    evaluated windows are a cut of the split, so their bytes are estimated as
    tokens x (split bytes / split tokens) from the shards manifest. The split's token count
    includes one `<|endoftext|>` per document (which has no bytes, but whose prediction is part
    of the loss), so the ratio and the loss count the same tokens.
    """
    if tokens == 0:
        raise EvaluationError(
            "no validation tokens were evaluated: the split is shorter than one window"
        )
    loss = total_nats / tokens
    return {
        "val_loss": loss,
        "val_ppl": math.exp(loss),
        "val_bpb": total_nats / math.log(2) / (tokens * bytes_per_token),
        "val_tokens": tokens,
    }


def validation_metrics(
    model: torch.nn.Module,
    split: TokenSplit,
    seq_len: int,
    batch_size: int,
    max_tokens: int | None,
    *,
    bytes_per_token: float,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte of `model` on a token split.

    `split` (from `open_token_split`) is read from its start in windows of `seq_len + 1`
    tokens that score every target once, at most `max_tokens` targets (a multiple of seq_len).
    `bytes_per_token` is the split's UTF-8 bytes / tokens (see `split_bytes_per_token`).
    """
    windows = sequential_windows(split, seq_len, max_tokens=max_tokens)
    total_nats, tokens = window_loss(model, windows, batch_size)
    return language_model_metrics(total_nats, tokens, bytes_per_token)


def split_bytes_per_token(shards_manifest: dict[str, Any], split: str = "val") -> float:
    """UTF-8 bytes per token of a split, from a shards manifest's `splits` section."""
    counts = shards_manifest["splits"][split]
    return counts["bytes"] / counts["tokens"]


# --- per-language validation metrics ------------------------------------------------------------


def shards_data_dir(shards_manifest: Mapping[str, Any]) -> Path | None:
    """The data directory a shards directory was built from: the input of its manifest that is
    a stage output (the other input, when present, is a tokenizer file); None if there is none."""
    for entry in shards_manifest.get("inputs", []):
        if "stage" in entry:
            return Path(entry["path"])
    return None


def validation_documents(
    data_dir: str | Path, val_fraction: float | None
) -> dict[str, tuple[str, int]]:
    """{doc_id: (language, UTF-8 bytes of its text)} of the data directory's non-empty documents
    in the val split (`val_fraction` as the shards were built with; None keeps every document)."""
    documents: dict[str, tuple[str, int]] = {}
    for path in dataset_doc_files(data_dir):
        for batch in document_batches(path, ["id", "text", "lang"], batch_size=8192):
            sizes = pc.fill_null(pc.binary_length(batch.column("text")), 0).to_pylist()
            ids, langs = batch.column("id").to_pylist(), batch.column("lang").to_pylist()
            for doc_id, lang, size in zip(ids, langs, sizes, strict=True):
                if size and (val_fraction is None or is_validation_document(doc_id, val_fraction)):
                    documents[doc_id] = (lang or UNKNOWN_LANGUAGE, size)
    return documents


def split_documents(split_dir: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """(doc_id, tokens) of each document of a token split, in shard order; the pieces of a
    document cut at a shard boundary (consecutive rows with one doc_id) are joined again."""
    pending_id: str | None = None
    pieces: list[np.ndarray] = []
    for path in sorted(Path(split_dir).glob(SHARD_PATTERN)):
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
            column = table.column("tokens").combine_chunks()
            offsets = column.offsets.to_numpy()
            values = column.values.to_numpy(zero_copy_only=False).astype(np.int64)  # a copy
            doc_ids = table.column("doc_id").to_pylist()
        for row, doc_id in enumerate(doc_ids):
            if doc_id != pending_id and pieces:
                yield pending_id, np.concatenate(pieces)
                pieces = []
            pending_id = doc_id
            pieces.append(values[offsets[row] : offsets[row + 1]])
    if pieces:
        yield pending_id, np.concatenate(pieces)


def document_sequences(tokens: np.ndarray, eot_id: int, seq_len: int) -> list[np.ndarray]:
    """A document's tokens after a leading `<|endoftext|>` (it starts a document), cut into
    sequences of up to `seq_len` + 1 tokens whose first is context only: every token of the
    document, its closing `<|endoftext|>` included, is predicted exactly once."""
    stream = np.concatenate([np.array([eot_id], dtype=np.int64), tokens.astype(np.int64)])
    return [stream[start : start + seq_len + 1] for start in range(0, len(stream) - 1, seq_len)]


def language_metrics(
    model: torch.nn.Module,
    split_dir: str | Path,
    documents: Mapping[str, tuple[str, int]],
    *,
    eot_id: int,
    pad_id: int,
    seq_len: int,
    batch_size: int,
    max_tokens_per_language: int,
) -> dict[str, dict[str, float]]:
    """val_loss, val_ppl, val_bpb, val_tokens, val_bytes and docs per language of a token split.

    Whole documents are scored (each from its start, in windows of `seq_len`), in shard order,
    until a language has `max_tokens_per_language` tokens (so it may exceed that by one
    document's worth); `documents` (from `validation_documents`) gives each doc_id's language
    and text bytes, so bits per byte is exact per language. Tokens of doc_ids missing from
    `documents` are not scored (logged). Returns {language: metrics}, languages sorted.
    """
    languages = {lang for lang, _ in documents.values()}
    chosen: dict[str, list[np.ndarray]] = {lang: [] for lang in languages}
    tokens = dict.fromkeys(languages, 0)
    text_bytes = dict.fromkeys(languages, 0)
    docs = dict.fromkeys(languages, 0)
    unknown = 0
    for doc_id, doc_tokens in split_documents(split_dir):
        if doc_id not in documents:
            unknown += 1
            continue
        lang, size = documents[doc_id]
        if tokens[lang] >= max_tokens_per_language:
            if all(count >= max_tokens_per_language for count in tokens.values()):
                break
            continue
        chosen[lang].append(doc_tokens)
        tokens[lang] += len(doc_tokens)
        text_bytes[lang] += size
        docs[lang] += 1
    if unknown:
        log.warning(
            "%d val documents of %s are not in the data directory: not scored per language "
            "(was the data refreshed after the shards were built?)", unknown, split_dir
        )
    results: dict[str, dict[str, float]] = {}
    for lang in sorted(lang for lang in languages if docs[lang]):
        sequences = [s for t in chosen[lang] for s in document_sequences(t, eot_id, seq_len)]
        total_nats = -sum(sequence_log_probs(model, sequences, pad_id, batch_size))
        metrics = language_model_metrics(
            total_nats, tokens[lang], bytes_per_token=text_bytes[lang] / tokens[lang]
        )
        results[lang] = {**metrics, "val_bytes": text_bytes[lang], "docs": docs[lang]}
    return results


def shards_language_metrics(
    model: torch.nn.Module,
    shards_dir: str | Path,
    shards_manifest: Mapping[str, Any],
    data_dir: str | Path | None,
    **options: Any,
) -> tuple[dict[str, dict[str, float]] | None, str | None]:
    """Per-language metrics of the shards' val split (`language_metrics` with `options`), reading
    languages and bytes from `data_dir`, by default the data directory the shards' manifest
    names. Returns (metrics, None), or (None, why) when that directory is not available."""
    data_dir = Path(data_dir) if data_dir is not None else shards_data_dir(shards_manifest)
    if data_dir is None:
        return None, f"the manifest of {shards_dir} names no data directory"
    if not has_dataset(data_dir):
        return None, f"the data directory {data_dir} is not available (no manifest.json there)"
    val_fraction = shards_manifest.get("params", {}).get("val_fraction")
    documents = validation_documents(data_dir, val_fraction)
    if not documents:
        return None, f"{data_dir} holds no val documents"
    tokenizer = shards_manifest["tokenizer"]
    metrics = language_metrics(
        model,
        Path(shards_dir) / "val",
        documents,
        eot_id=tokenizer["eot_id"],
        pad_id=tokenizer.get("pad_id", tokenizer["eot_id"]),
        **options,
    )
    return metrics, None


# --- BLiMP --------------------------------------------------------------------------------------


def sequence_log_probs(
    model: torch.nn.Module, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int
) -> list[float]:
    """Total log-probability (nats) of each sequence's tokens after its first, which is context."""
    scored = continuation_scores(model, sequences, [1] * len(sequences), pad_id, batch_size)
    return [log_prob for log_prob, _ in scored]


@torch.inference_mode()
def continuation_scores(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    context_lengths: Sequence[int],
    pad_id: int,
    batch_size: int,
) -> list[tuple[float, bool]]:
    """(log-probability in nats, greedy?) of each sequence's tokens after its first
    `context_lengths[i]`; greedy means every one of them is the model's argmax prediction.

    One forward pass per batch over context + continuation (no KV cache needed). Sequences are
    grouped by length to limit padding, padded at the end (a causal model never looks right, so
    padding changes nothing before it), and padded or context targets carry no loss.
    """
    device = model_device(model)
    scores: list[tuple[float, bool]] = [(0.0, True)] * len(sequences)
    by_length = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(by_length), batch_size):
        chosen = by_length[start : start + batch_size]
        width = max(len(sequences[i]) for i in chosen)
        tokens = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        targets = torch.full((len(chosen), width - 1), IGNORE_INDEX, dtype=torch.long)
        for row, i in enumerate(chosen):
            sequence = torch.as_tensor(sequences[i], dtype=torch.long)
            context = context_lengths[i]
            if not 1 <= context < len(sequence):
                raise EvaluationError(
                    f"sequence {i} has {len(sequence)} tokens and a context of {context}: "
                    "it needs at least one context and one continuation token"
                )
            tokens[row, : len(sequence)] = sequence
            targets[row, context - 1 : len(sequence) - 1] = sequence[context:]
        logits = model(tokens[:, :-1].to(device)).float()
        targets = targets.to(device)
        # Flattened rows, not a (B, V, T) transpose: the strided layout is ~5x slower on CPU.
        nll = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(len(chosen), width - 1)
        scored = targets != IGNORE_INDEX
        greedy = ((logits.argmax(dim=-1) == targets) | ~scored).all(dim=1)
        for index, total, is_greedy in zip(
            chosen, (-nll.sum(dim=1)).tolist(), greedy.tolist(), strict=True
        ):
            scores[index] = (total, is_greedy)
    return scores


def blimp_accuracy(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    paradigms: dict[str, list[MinimalPair]],
    batch_size: int,
    max_pairs_per_paradigm: int | None = None,
) -> dict[str, Any]:
    """BLiMP accuracy: a pair counts as right when the good sentence's total log-probability is
    strictly higher than the bad one's; each sentence is scored after a leading `<|endoftext|>`,
    as a document start. Returns {"blimp_acc": mean over paradigms, "blimp": {paradigm: acc}}.
    """
    if not paradigms:
        raise EvaluationError("no BLiMP paradigms to score")
    special = special_token_ids(tokenizer)
    per_paradigm: dict[str, float] = {}
    for name, pairs in paradigms.items():
        pairs = pairs[:max_pairs_per_paradigm] if max_pairs_per_paradigm else pairs
        sentences = [to_valid_utf8(s) for pair in pairs for s in (pair.good, pair.bad)]
        sequences = [[special.eot_id] + e.ids for e in tokenizer.encode_batch_fast(sentences)]
        scores = sequence_log_probs(model, sequences, special.pad_id, batch_size)
        right = sum(good > bad for good, bad in zip(scores[0::2], scores[1::2], strict=True))
        per_paradigm[name] = right / len(pairs)
    return {"blimp_acc": sum(per_paradigm.values()) / len(per_paradigm), "blimp": per_paradigm}


# --- samples ------------------------------------------------------------------------------------


@torch.inference_mode()
def sample_generations(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> list[dict[str, str]]:
    """A completion per prompt from `model.generate`, stopping at `<|endoftext|>`.

    Each prompt is generated after a leading `<|endoftext|>` (it starts a document) with the
    random generator seeded to `seed`, so a prompt's completion does not depend on the others;
    the caller's global random state is left as it was.
    """
    device = model_device(model)
    eot_id = special_token_ids(tokenizer).eot_id
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    samples = []
    for prompt in prompts:
        prompt_ids = [eot_id] + tokenizer.encode(to_valid_utf8(prompt)).ids
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            output = model.generate(
                torch.tensor([prompt_ids], device=device),
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                eos_id=eot_id,
            )
        new_ids = output[0, len(prompt_ids) :].tolist()
        if eot_id in new_ids:
            new_ids = new_ids[: new_ids.index(eot_id)]
        samples.append(
            {"prompt": prompt, "completion": tokenizer.decode(new_ids, skip_special_tokens=False)}
        )
    return samples


# --- a checkpoint, end to end -------------------------------------------------------------------


class EvalConfig(BaseModel):
    """What an evaluation measures and how: the validation cut, per-language metrics, BLiMP
    pairs, benchmarks and their few-shot draw, the sampled generations, batch sizes and device.
    Invalid values and combinations raise ValidationError (a ValueError) naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_val_tokens: int = Field(
        1 << 20, ge=1, description="Validation tokens to evaluate (the split is cut there)."
    )
    max_tokens_per_language: int = Field(
        1 << 16, ge=0,
        description="Validation tokens per language for per-language loss / bits per byte "
        "(whole documents; 0: off).",
    )  # fmt: skip
    seq_len: int | None = Field(
        None, ge=1, description="Tokens per validation window; default: the model's context."
    )
    batch_size: int = Field(16, ge=1, description="Validation windows per forward pass.")
    blimp_batch_size: int = Field(
        64, ge=1,
        description="Sentences per forward pass (BLiMP sentences and benchmark continuations).",
    )  # fmt: skip
    blimp_max_pairs: int | None = Field(
        None, ge=1, description="Pairs per BLiMP paradigm (default: all)."
    )
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
        "(default: the task's own file, without the question); each NAME must be in tasks.",
    )
    fewshot_seed: int = Field(1234, ge=0, description="Seed of the few-shot example draw.")
    benchmark_limit: int | None = Field(
        None, ge=1, description="Score only the first N questions of each benchmark."
    )
    prompts: tuple[str, ...] = Field(
        DEFAULT_PROMPTS, description="Prompts for sampled generations."
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens generated per prompt.")
    temperature: float = Field(
        0.8, ge=0.0, allow_inf_nan=False, description="Sampling temperature; 0: greedy."
    )
    top_k: int | None = Field(
        50, ge=1, description="Sample among the k likeliest tokens; empty: all of them."
    )
    seed: int = Field(0, ge=0, description="Seed of each prompt's sampled generation.")
    # CPU by default: scores then do not depend on which accelerator happens to be free.
    device: str = Field("cpu", description="cpu, auto (CUDA when available), cuda, cuda:1, ...")

    @field_validator("tasks", "fewshot_from", mode="before")
    @classmethod
    def _parse_task_sources(cls, value: object) -> object:
        # The CLI hands over one string, `hellaswag=PATH,arc_easy`; the UI and Python a mapping.
        if not isinstance(value, str):
            return value
        sources = {}
        for entry in filter(None, (part.strip() for part in value.split(","))):
            name, sep, source = (part.strip() for part in entry.partition("="))
            if sep and not source:
                raise ValueError(f"benchmark {name!r} has an empty source: NAME=PATH_OR_URL")
            sources[name] = source or benchmark_task(name).url
        return sources

    @field_validator("tasks", "fewshot_from")
    @classmethod
    def _check_task_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            benchmark_task(name)  # ValueError listing the known benchmarks
        return value

    @model_validator(mode="after")
    def _check_fewshot_sources(self) -> EvalConfig:
        unused = sorted(set(self.fewshot_from or {}) - set(self.tasks or {}))
        if unused:
            raise ValueError(
                f"fewshot_from names {', '.join(unused)}, which tasks does not: add them to "
                "tasks or leave them out of fewshot_from"
            )
        return self

    def benchmark_options(self, cache_dir: str | Path | None) -> dict[str, Any]:
        """Keyword arguments of `evaluate_benchmarks` (few-shot draw, limit, download cache)."""
        options: dict[str, Any] = {
            "num_fewshot": self.num_fewshot,
            "fewshot_sources": self.fewshot_from,
            "seed": self.fewshot_seed,
            "limit": self.benchmark_limit,
        }
        if cache_dir:
            options["cache_dir"] = cache_dir
        return options


def checkpoint_tokenizer_path(checkpoint_dir: Path, shards_dir: Path) -> Path:
    """The training run's copy of the tokenizer when there is one, else the shards'."""
    own = checkpoint_dir / TOKENIZER_FILE
    return own if own.is_file() else shards_dir / TOKENIZER_FILE


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    shards_dir: str | Path,
    config: EvalConfig = EvalConfig(),
    *,
    data_dir: str | Path | None = None,
    blimp_dir: str | Path | None = None,
    benchmark_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Score a saved model on the shards' val split, optionally BLiMP and benchmarks, and sample
    completions, as `config` says.

    `checkpoint_dir` is a training output or a `checkpoints/step-NNNNNN` directory; the
    tokenizer is its `tokenizer.json`, else the shards'. Per-language metrics read the data
    directory the shards were built from, or `data_dir`; BLiMP is scored when `blimp_dir` is
    given; downloaded benchmark files are kept in `benchmark_cache` (default ~/.cache/lmforge).
    Returns val_loss, val_ppl, val_bpb, val_tokens, samples, `languages` ({lang: val_loss,
    val_ppl, val_bpb, val_tokens, val_bytes, docs}) when that data directory is available, else
    `languages_skipped` saying why; blimp_acc plus per-paradigm blimp with `blimp_dir`, and
    `benchmarks` (task -> metrics) for `config.tasks`.

    Raises EvaluationError when the tokenizer is not the one the shards were built with, its
    vocabulary differs from the model's, or `config.seq_len` exceeds the model's context;
    ManifestError for a folder that is not a shards output; FileNotFoundError/CheckpointError
    for a checkpoint that is missing or cannot be read.
    """
    checkpoint_dir, shards_dir = Path(checkpoint_dir), Path(shards_dir)
    shards_manifest = read_manifest(shards_dir, stage=SHARDS_STAGE)
    tokenizer_path = checkpoint_tokenizer_path(checkpoint_dir, shards_dir)
    tokenizer = load_tokenizer(tokenizer_path)
    if tokenizer_sha256(tokenizer_path) != shards_manifest["tokenizer"]["sha256"]:
        raise EvaluationError(
            f"{tokenizer_path} is not the tokenizer {shards_dir} was built with (sha256 differs): "
            "evaluate the model on shards made with its own tokenizer"
        )
    model = load_model(checkpoint_dir, device=resolve_device(config.device))
    if model.config.vocab_size != tokenizer_vocab_size(tokenizer):
        raise EvaluationError(
            f"the model in {checkpoint_dir} has vocab_size={model.config.vocab_size} but "
            f"{tokenizer_path} has {tokenizer_vocab_size(tokenizer)} tokens: "
            "they do not belong together"
        )
    seq_len = config.seq_len or model.config.max_seq_len
    if seq_len > model.config.max_seq_len:
        raise EvaluationError(
            f"eval.seq_len={seq_len} is longer than the context of the model in {checkpoint_dir} "
            f"({model.config.max_seq_len} tokens): lower seq_len or leave it empty"
        )

    results: dict[str, Any] = validation_metrics(
        model,
        open_token_split(shards_dir / "val"),
        seq_len,
        config.batch_size,
        config.max_val_tokens,
        bytes_per_token=split_bytes_per_token(shards_manifest, "val"),
    )
    if config.max_tokens_per_language:
        languages, skipped = shards_language_metrics(
            model,
            shards_dir,
            shards_manifest,
            data_dir,
            seq_len=seq_len,
            batch_size=config.batch_size,
            max_tokens_per_language=config.max_tokens_per_language,
        )
        if skipped:
            log.warning("per-language metrics skipped: %s", skipped)
            results["languages_skipped"] = skipped
        else:
            results["languages"] = languages
    if blimp_dir is not None:
        paradigms = load_blimp(blimp_dir)
        results.update(
            blimp_accuracy(
                model, tokenizer, paradigms, config.blimp_batch_size, config.blimp_max_pairs
            )
        )
    if config.tasks:
        from lmforge.tasks.evaluate.benchmarks import evaluate_benchmarks

        results["benchmarks"] = evaluate_benchmarks(
            model,
            tokenizer,
            config.tasks,
            batch_size=config.blimp_batch_size,
            max_length=model.config.max_seq_len,
            **config.benchmark_options(benchmark_cache),
        )
    results["samples"] = sample_generations(
        model,
        tokenizer,
        config.prompts,
        config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        seed=config.seed,
    )
    results.update(seq_len=seq_len, tokenizer_sha256=shards_manifest["tokenizer"]["sha256"])
    return results
