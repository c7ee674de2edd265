"""Tiny token-shard directories in the shards contract's exact format, for model tests.

Layout: SHARDS/tokenizer.json, SHARDS/{train,val}/shard-NNNNN.arrow (Arrow IPC file format, one
record batch per shard, schema `doc_id: string, tokens: list<uint16|uint32>` with metadata
`lmforge.vocab_size` and `lmforge.eot_id`), SHARDS/manifest.json with a `tokenizer` entry.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from tokenizers import Tokenizer, models

from lmforge.manifest import stage_output


def shard_schema(vocab_size: int, eot_id: int) -> pa.Schema:
    token_type = pa.uint16() if vocab_size <= 1 << 16 else pa.uint32()
    return pa.schema(
        [("doc_id", pa.string()), ("tokens", pa.list_(token_type))],
        metadata={"lmforge.vocab_size": str(vocab_size), "lmforge.eot_id": str(eot_id)},
    )


def write_shard(path: Path, rows: list[tuple[str, list[int]]], schema: pa.Schema) -> None:
    """One shard file holding `rows` (doc_id, tokens) as a single record batch."""
    batch = pa.record_batch(
        [pa.array([doc_id for doc_id, _ in rows], pa.string()),
         pa.array([tokens for _, tokens in rows], schema.field("tokens").type)],
        schema=schema,
    )
    with pa.ipc.new_file(str(path), schema) as writer:
        writer.write_batch(batch)


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
        write_shard(split_dir / f"shard-{index:05d}.arrow", rows, schema)
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
    with stage_output(shards_dir, "shards", params={"shard_tokens": shard_tokens}) as stage:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.add_special_tokens(["<|endoftext|>", "<|pad|>"])
        tokenizer.save(str(stage.path / "tokenizer.json"))
        splits = {}
        for name, documents in (("train", train), ("val", val)):
            stream = write_split(stage.path / name, documents, vocab_size, eot_id, shard_tokens)
            splits[name] = {"tokens": len(stream), "documents": len(documents)}
        tokenizer_entry = {"eot_id": eot_id, "pad_id": 1}
        if manifest_vocab_size:
            tokenizer_entry["vocab_size"] = vocab_size
        stage.extra = {"tokenizer": tokenizer_entry, "splits": splits}
    return shards_dir
