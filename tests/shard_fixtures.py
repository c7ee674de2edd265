"""Tiny token-shard directories in the shards contract's exact format, for model tests.

Layout: SHARDS/tokenizer.json, SHARDS/{train,val}/shard-NNNNN.arrow, SHARDS/manifest.json with a
`tokenizer` entry. Shards are written by `lmforge.model.shard_format`, the module that owns the
format; the packing of documents into shards here is an independent, simpler oracle.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models

from lmforge.manifest import sha256_file, stage_output
from lmforge.model.shard_format import shard_name, shard_schema, write_shard
from lmforge.tasks.tokens.shards import STAGE


def write_rows(path: Path, rows: list[tuple[str, list[int]]], schema) -> None:
    """One shard file holding `rows` (doc_id, tokens)."""
    write_shard(
        path,
        schema,
        [doc_id for doc_id, _ in rows],
        [len(tokens) for _, tokens in rows],
        [token for _, tokens in rows for token in tokens],
    )


def write_split(
    split_dir: Path,
    documents: list[list[int]],
    vocab_size: int,
    eot_id: int = 0,
    shard_tokens: int | None = None,
) -> list[int]:
    """Write `documents` (each gets a trailing eot_id) into shards of exactly `shard_tokens` tokens
    (the last shorter), splitting a document at a boundary; return the whole token stream."""
    split_dir.mkdir(parents=True, exist_ok=True)
    schema = shard_schema(vocab_size, eot_id)
    stream: list[int] = []
    shards: list[list[tuple[str, list[int]]]] = [[]]
    room = shard_tokens
    for number, document in enumerate(documents):
        tokens = list(document) + [eot_id]
        stream.extend(tokens)
        while tokens:
            if room == 0:
                shards.append([])
                room = shard_tokens
            piece = tokens if room is None else tokens[:room]
            shards[-1].append((f"doc-{number}", piece))
            tokens = tokens[len(piece) :]
            if room is not None:
                room -= len(piece)
    for index, rows in enumerate(shards):
        write_rows(split_dir / shard_name(index), rows, schema)
    return stream


def write_shards_dir(
    shards_dir: Path,
    train: list[list[int]],
    val: list[list[int]],
    vocab_size: int,
    eot_id: int = 0,
    shard_tokens: int | None = None,
    manifest_vocab_size: bool = True,
) -> Path:
    """A finished shards stage output (with manifest.json) holding the `train` and `val` documents.

    manifest_vocab_size False leaves `tokenizer.vocab_size` out of the manifest, so readers must
    fall back to the shards' schema metadata.
    """
    with stage_output(shards_dir, STAGE, params={"shard_tokens": shard_tokens}) as stage:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.add_special_tokens(["<|endoftext|>", "<|pad|>"])
        tokenizer.save(str(stage.path / "tokenizer.json"))
        splits = {}
        for name, documents in (("train", train), ("val", val)):
            stream = write_split(stage.path / name, documents, vocab_size, eot_id, shard_tokens)
            splits[name] = {"tokens": len(stream), "documents": len(documents)}
        tokenizer_entry = {
            "sha256": sha256_file(stage.path / "tokenizer.json"),
            "eot_id": eot_id,
            "pad_id": 1,
        }
        if manifest_vocab_size:
            tokenizer_entry["vocab_size"] = vocab_size
        stage.extra = {"tokenizer": tokenizer_entry, "splits": splits}
    return shards_dir
