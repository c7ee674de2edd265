"""A model line's pinned held-out set: written once as JSONL, then every version of the line is
scored on it with its own tokenizer.

The set is the documents of a data-stage directory that build_shards puts in the val split (the
id hash of `is_validation_document`, so no version of the line trained on them while the
dataset grows), or a user's held-out file. Bits per byte divide by the text's bytes, not its
tokens, so versions with different tokenizers are compared on equal terms.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

from lmforge.manifest import ManifestError, read_manifest
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.tasks.ablation.heldout import HeldoutError, heldout_documents, write_heldout_shards
from lmforge.tasks.evaluate.checkpoint import EvalConfig, EvaluationError, evaluate_checkpoint
from lmforge.tasks.tokens.shards import STAGE as SHARDS_STAGE
from lmforge.tasks.tokens.shards import (
    document_files,
    is_validation_document,
    iter_document_batches,
)
from lmforge.tasks.tokens.tokenizer import tokenizer_sha256

BATCH_DOCUMENTS = 4096
SCORES = ("val_loss", "val_ppl", "val_bpb", "val_tokens")


def val_split_documents(
    data_dir: str | Path, val_fraction: float
) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """Batches of (ids, texts, languages) of the data-stage directory's documents that
    build_shards (at `val_fraction`) puts in the val split."""
    for batch in iter_document_batches(document_files(data_dir), BATCH_DOCUMENTS):
        rows = [
            row
            for row in zip(batch.ids, batch.texts, batch.langs, strict=True)
            if is_validation_document(row[0], val_fraction)
        ]
        if rows:
            ids, texts, langs = (list(column) for column in zip(*rows, strict=True))
            yield ids, texts, langs


def write_pinned_set(
    out_path: str | Path,
    *,
    data_dir: str | Path | None = None,
    val_fraction: float | None = None,
    heldout: str | Path | None = None,
) -> int:
    """Write the held-out documents to `out_path` as JSONL (`id`, `text`, `lang`: the records
    `heldout_documents` reads back), atomically; returns how many.

    The documents are every one of `heldout` (a JSONL file or data-stage directory) when given,
    else the val split of `data_dir` at `val_fraction`. Raises HeldoutError when there is none
    (ManifestError/ShardError for a folder that is not a data stage output)."""
    if heldout is not None:
        batches, origin = heldout_documents(heldout), f"held-out set {heldout}"
    elif data_dir is not None and val_fraction is not None:
        batches = val_split_documents(data_dir, val_fraction)
        origin = f"the val split of {data_dir} (val_fraction={val_fraction})"
    else:
        raise ValueError("write_pinned_set needs `heldout`, or `data_dir` and `val_fraction`")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    count = 0
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            for ids, texts, langs in batches:
                for doc_id, text, lang in zip(ids, texts, langs, strict=True):
                    record = {"id": doc_id, "text": text, "lang": lang}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    count += 1
        if count == 0:
            raise HeldoutError(
                f"{origin} holds no document with text: give a larger dataset or a held-out "
                "set of its own (gate.heldout)"
            )
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
    return count


def score_checkpoint(
    checkpoint_dir: str | Path,
    heldout_path: str | Path,
    shards_root: str | Path,
    evaluation: EvalConfig | None = None,
) -> dict[str, float]:
    """val_loss, val_ppl, val_bpb and val_tokens of the model in `checkpoint_dir` on the
    held-out JSONL `heldout_path`, tokenized with the checkpoint's own tokenizer into shards
    under `shards_root` (one folder per held-out set and tokenizer, reused when finished).

    `evaluation` gives the validation cut, batch size and device (default EvalConfig());
    per-language metrics, benchmarks and samples are left out. Raises EvaluationError when the
    checkpoint has no tokenizer, FileNotFoundError/CheckpointError for a missing or damaged one.
    """
    checkpoint_dir = Path(checkpoint_dir)
    tokenizer = checkpoint_dir / TOKENIZER_FILE
    if not tokenizer.is_file():
        raise EvaluationError(
            f"{checkpoint_dir} has no {TOKENIZER_FILE}: give the training output folder, which "
            "keeps its tokenizer"
        )
    heldout_path = Path(heldout_path)
    shards = Path(shards_root) / f"{heldout_path.stem}-{tokenizer_sha256(tokenizer)[:16]}"
    if not _finished_shards(shards):
        write_heldout_shards(heldout_path, tokenizer, shards)
    config = (evaluation or EvalConfig()).model_copy(
        update={"max_tokens_per_language": 0, "tasks": None, "fewshot_from": None, "prompts": ()}
    )
    results = evaluate_checkpoint(checkpoint_dir, shards, config)
    return {name: float(results[name]) for name in SCORES}


def _finished_shards(path: Path) -> bool:
    try:
        read_manifest(path, stage=SHARDS_STAGE)
    except ManifestError:
        return False
    return True
