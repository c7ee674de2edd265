"""A user's held-out documents as the val split of a shards directory, tokenized with the
ablation's one tokenizer, so `lmforge eval` scores every variant's models on them.

The folder follows the "Token shards" contract (`lmforge.tasks.tokens.shards`) with every
document in val, in the seeded order build_shards gives a split, and an empty train split.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.manifest import read_manifest, stage_output
from lmforge.model.shard_format import (
    TOKENIZER_FILE,
    shard_name,
    shard_schema,
    token_dtype,
    write_shard,
)
from lmforge.tasks.jsonl import read_jsonl
from lmforge.tasks.tokens.shards import (
    STAGE as SHARDS_STAGE,
    UNKNOWN_LANGUAGE,
    document_files,
    iter_document_batches,
    shuffle_key,
)
from lmforge.tasks.tokens.tokenizer import (
    flatten_encodings,
    load_tokenizer,
    special_token_ids,
    to_valid_utf8,
    tokenizer_sha256,
    tokenizer_vocab_size,
)

BATCH_DOCUMENTS = 1024
SHARD_TOKENS = 1 << 24


class HeldoutError(LmforgeError, ValueError):
    """Held-out documents that cannot be read; the message names the file and line."""


def check_heldout(source: str | Path) -> None:
    """Fail before any work when `source` is neither a data-stage directory nor a JSONL file of
    documents with text (ManifestError, HeldoutError naming it)."""
    for _ in heldout_documents(source):
        return
    raise HeldoutError(f"held-out set {source} holds no document with text")


def heldout_documents(source: str | Path) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """Batches of (ids, texts, languages) of a data-stage directory's documents, or of a JSONL
    file's records (`text`; `id` default FILE:LINE, `lang` default und)."""
    source = Path(source)
    if source.is_dir():
        for batch in iter_document_batches(document_files(source), BATCH_DOCUMENTS):
            yield batch.ids, batch.texts, batch.langs
        return
    if not source.is_file():
        raise HeldoutError(
            f"held-out set {source} does not exist: give a data-stage directory or a JSONL file"
        )
    ids: list[str] = []
    texts: list[str] = []
    langs: list[str] = []
    for line, record in read_jsonl(source, HeldoutError):
        text = record.get("text")
        if not isinstance(text, str):
            raise HeldoutError(f"{source}:{line}: a held-out record needs a string field text")
        if not text:
            continue
        ids.append(str(record.get("id") or f"{source.name}:{line}"))
        texts.append(to_valid_utf8(text))
        langs.append(str(record.get("lang") or UNKNOWN_LANGUAGE))
        if len(ids) == BATCH_DOCUMENTS:
            yield ids, texts, langs
            ids, texts, langs = [], [], []
    if ids:
        yield ids, texts, langs


def write_heldout_shards(
    source: str | Path, tokenizer_path: str | Path, out_dir: str | Path, seed: int = 0
) -> dict[str, Any]:
    """Tokenize every document of `source` (see `heldout_documents`) with `tokenizer_path` into
    the val split of a shards directory `out_dir`, written atomically; returns its manifest.
    Documents are ordered by build_shards' seeded shuffle, so a cut of the split (an
    evaluation's max_val_tokens) is a sample of the whole set, not its first file."""
    tokenizer = load_tokenizer(tokenizer_path)
    vocab, special = tokenizer_vocab_size(tokenizer), special_token_ids(tokenizer)
    dtype = token_dtype(vocab)
    documents: list[tuple[int, str, np.ndarray, int]] = []  # (order key, id, tokens, bytes)
    for ids, texts, _ in heldout_documents(source):
        encodings = tokenizer.encode_batch_fast(texts)
        tokens, lengths = flatten_encodings(encodings, special.eot_id, dtype)
        ends = np.cumsum(lengths)
        for doc_id, text, end, length in zip(ids, texts, ends, lengths, strict=True):
            documents.append((shuffle_key(doc_id, seed), doc_id, tokens[end - length : end],
                              len(text.encode("utf-8"))))  # fmt: skip
    if not documents:
        raise HeldoutError(f"held-out set {source} holds no document with text")
    documents.sort(key=lambda document: document[0])
    params = {"heldout": str(source), "tokenizer_path": str(tokenizer_path), "seed": seed}
    with stage_output(out_dir, SHARDS_STAGE, params, inputs=[source, tokenizer_path]) as stage:
        shutil.copyfile(tokenizer_path, stage.path / TOKENIZER_FILE)
        schema = shard_schema(vocab, special.eot_id)
        (stage.path / "train").mkdir()
        (stage.path / "val").mkdir()
        shards = 0
        for first, end in _shard_ranges([len(tokens) for _, _, tokens, _ in documents]):
            chunk = documents[first:end]
            write_shard(
                stage.path / "val" / shard_name(shards), schema, [d[1] for d in chunk],
                [len(d[2]) for d in chunk], np.concatenate([d[2] for d in chunk]),
            )  # fmt: skip
            shards += 1
        val = {
            "tokens": int(sum(len(d[2]) for d in documents)),
            "bytes": int(sum(d[3] for d in documents)),
            "documents": len(documents),
            "shards": shards,
        }
        empty = {"tokens": 0, "bytes": 0, "documents": 0, "shards": 0}
        stage.counts.update(val_documents=val["documents"], val_tokens=val["tokens"])
        stage.extra.update(
            tokenizer={"sha256": tokenizer_sha256(stage.path / TOKENIZER_FILE), "vocab_size": vocab,
                       "eot_id": special.eot_id, "pad_id": special.pad_id},  # fmt: skip
            token_dtype=dtype.name,
            splits={"train": empty, "val": val},
        )
    return read_manifest(out_dir)


def _shard_ranges(lengths: list[int]) -> Iterator[tuple[int, int]]:
    """(first, end) document ranges of about SHARD_TOKENS tokens each, cut between documents."""
    first, filled = 0, 0
    for index, length in enumerate(lengths):
        filled += length
        if filled >= SHARD_TOKENS:
            yield first, index + 1
            first, filled = index + 1, 0
    if first < len(lengths):
        yield first, len(lengths)
