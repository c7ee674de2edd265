"""The on-disk format of token shards, defined in one place for the writer and every reader.

A split directory (`SHARDS/train`, `SHARDS/val`) holds `shard-00000.arrow`, `shard-00001.arrow`,
... in the Arrow IPC *file* format. Each file is one record batch of schema

    doc_id: string, tokens: list<uint16>        (list<uint32> when the vocabulary exceeds 65,536)

with schema metadata `lmforge.vocab_size` and `lmforge.eot_id`. A row is a document, or a piece
of one cut at a shard boundary (the pieces keep the doc_id). The list offsets are the
document-offset index, and the flattened `tokens` values are one contiguous buffer that a reader
memory-maps without a copy.

Beside the splits, `SHARDS/tokenizer.json` (TOKENIZER_FILE) is the BPE tokenizer that made the
tokens; a training output copies it next to its weights under the same name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from lmforge.errors import LmforgeError

SHARD_PATTERN = "shard-*.arrow"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_SIZE_KEY = b"lmforge.vocab_size"
EOT_ID_KEY = b"lmforge.eot_id"
TOKEN_TYPES = (pa.uint16(), pa.uint32())
MAX_SHARD_TOKENS = 2**31 - 1  # Arrow `list` offsets are int32


class TokenDataError(LmforgeError, ValueError):
    """A split directory or shard cannot be read as lmforge token shards; the message names it."""


def shard_name(index: int) -> str:
    """The file name of a split's `index`-th shard; names sort in shard order."""
    return f"shard-{index:05d}.arrow"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535, so a vocabulary of up to 65,536 tokens fits in it."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def shard_schema(vocab_size: int, eot_id: int) -> pa.Schema:
    """The schema, metadata included, of every shard written for this vocabulary."""
    value_type = pa.uint16() if token_dtype(vocab_size) == np.uint16 else pa.uint32()
    return pa.schema(
        [("doc_id", pa.string()), ("tokens", pa.list_(value_type))],
        metadata={VOCAB_SIZE_KEY: str(vocab_size).encode(), EOT_ID_KEY: str(eot_id).encode()},
    )


def write_shard(
    path: str | Path,
    schema: pa.Schema,
    doc_ids: Sequence[str],
    lengths: Sequence[int] | np.ndarray,
    values: np.ndarray | Sequence[int],
) -> None:
    """Write one shard: row i is `doc_ids[i]` with the next `lengths[i]` tokens of `values`.

    One record batch per file keeps the token buffer contiguous, so readers can memory-map it.
    Raises ValueError when the lengths do not add up to the number of values.
    """
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] != len(values):
        raise ValueError(f"{path}: lengths add up to {offsets[-1]} tokens, got {len(values)}")
    if offsets[-1] > MAX_SHARD_TOKENS:
        raise ValueError(f"{path}: {offsets[-1]} tokens exceed a shard's {MAX_SHARD_TOKENS}")
    value_type = schema.field("tokens").type.value_type
    tokens = pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values, type=value_type)
    )
    batch = pa.record_batch([pa.array(doc_ids, pa.string()), tokens], schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(batch)


def read_shard_schema(path: str | Path) -> pa.Schema:
    """The schema of a shard file, read from its footer; TokenDataError if it is not Arrow IPC."""
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).schema
    except (pa.ArrowInvalid, OSError) as error:
        raise TokenDataError(f"{path} is not an Arrow IPC file: {error}") from error


def shard_vocabulary(path: str | Path, schema: pa.Schema) -> tuple[int, int]:
    """(vocab_size, eot_id) of a shard whose `schema` follows the format; TokenDataError naming
    `path` when the columns, token type or metadata are not a token shard's."""
    doc_id = schema.field("doc_id").type if "doc_id" in schema.names else None
    tokens = schema.field("tokens").type if "tokens" in schema.names else None
    doc_id_ok = doc_id is not None and (
        pa.types.is_string(doc_id) or pa.types.is_large_string(doc_id)
    )
    tokens_ok = tokens is not None and pa.types.is_list(tokens) and tokens.value_type in TOKEN_TYPES
    if not (doc_id_ok and tokens_ok):
        found = ", ".join(f"{field.name}: {field.type}" for field in schema)
        raise TokenDataError(
            f"{path} has schema ({found}); a token shard needs "
            "doc_id: string, tokens: list<uint16> (or list<uint32> for vocabularies over 65,536)"
        )
    metadata = schema.metadata or {}
    try:
        return int(metadata[VOCAB_SIZE_KEY]), int(metadata[EOT_ID_KEY])
    except (KeyError, ValueError) as error:
        raise TokenDataError(
            f"{path} lacks integer schema metadata {VOCAB_SIZE_KEY.decode()} and "
            f"{EOT_ID_KEY.decode()}: rebuild the shards with `lmforge shards build`"
        ) from error


def read_shard_tokens(path: str | Path) -> tuple[np.ndarray, int, int]:
    """(tokens, vocab_size, eot_id) of one shard; `tokens` is a read-only view of the memory map
    (a copy only for a file written with several record batches). TokenDataError names the file
    when it is not a readable token shard."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    except (pa.ArrowInvalid, OSError) as error:
        raise TokenDataError(f"{path} is not an Arrow IPC file: {error}") from error
    vocab_size, eot_id = shard_vocabulary(path, reader.schema)
    try:
        column = reader.read_all().column("tokens")
    except (pa.ArrowInvalid, OSError) as error:
        raise TokenDataError(f"{path} is truncated or damaged: {error}") from error
    # flatten() honours list offsets; with one record batch it is a view of the map.
    values = [chunk.flatten() for chunk in column.chunks]
    if any(chunk.null_count for chunk in values):
        raise TokenDataError(f"{path} has null tokens: every token must be an integer id")
    chunks = [chunk.to_numpy(zero_copy_only=False) for chunk in values]
    if not chunks:
        value_type = reader.schema.field("tokens").type.value_type
        return np.empty(0, dtype=value_type.to_pandas_dtype()), vocab_size, eot_id
    tokens = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return tokens, vocab_size, eot_id
