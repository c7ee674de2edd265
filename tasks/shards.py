"""Token shards: the data stage's documents -> a byte-level BPE -> Arrow IPC shards per split.

Layout of a shards directory (the "Token shards" contract):

    tokenizer.json
    train/shard-00000.arrow ...   one record batch per file: doc_id: string, tokens: list<uint16>
    val/shard-00000.arrow ...     (list<uint32> when the vocabulary exceeds 65,536 ids)
    manifest.json                 digests, parameters, per-split counts, tokenizer digest

Each document's tokens end with `<|endoftext|>`; a document may be cut at a shard boundary, its
pieces keeping the same doc_id, so that every shard but a split's last holds exactly
`shard_tokens` tokens.

Documents go to train or val by a hash of their id alone, so a document keeps its split when
the corpus grows. The order within a split is a seeded hash of the id, which is a shuffle that
does not depend on how the data stage laid documents out in files.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from lmforge.manifest import (
    ManifestError,
    manifest_digest,
    read_manifest,
    stage_output,
    verify_outputs,
)
from lmforge.tasks.tokenizer import (
    TokenizerConfig,
    encode_documents,
    load_tokenizer,
    special_token_ids,
    to_valid_utf8,
    tokenizer_sha256,
    tokenizer_vocab_size,
    train_tokenizer,
)

log = logging.getLogger(__name__)

STAGE = "build_shards"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")
SHARD_GLOB = "shard-*.arrow"
VOCAB_SIZE_KEY = b"lmforge.vocab_size"
EOT_ID_KEY = b"lmforge.eot_id"
DOCUMENT_COLUMNS = ["id", "text", "lang"]
UNKNOWN_LANGUAGE = "und"  # BCP 47 "undetermined", for documents without a language tag
MAX_LIST_OFFSET = 2**31 - 1  # Arrow `list` offsets are int32


class ShardError(ManifestError):
    """A shards directory, or the data it is built from, is unusable; the message names the file."""


@dataclass(frozen=True)
class ShardParams:
    """Parameters of `build_shards` (recorded verbatim in the manifest).

    vocab_size/min_frequency: BPE training (ignored when tokenizer_path names a tokenizer to reuse).
    shard_tokens: tokens per shard file (all but a split's last shard hold exactly this many).
    val_fraction: share of documents, chosen by a hash of their id, that go to the val split.
    seed: the document shuffle within each split.
    batch_size: documents per `encode_batch` call (the Rust tokenizer parallelises within a batch).
    """

    vocab_size: int = 8192
    min_frequency: int = 2
    shard_tokens: int = 1 << 24
    val_fraction: float = 0.05
    seed: int = 0
    tokenizer_path: str | None = None
    batch_size: int = 1024

    def __post_init__(self) -> None:
        TokenizerConfig(self.vocab_size, self.min_frequency)  # validates both
        if not 0 < self.shard_tokens <= MAX_LIST_OFFSET:
            raise ValueError(
                f"shard_tokens must be in 1..{MAX_LIST_OFFSET}, got {self.shard_tokens}"
            )
        if not 0 < self.val_fraction < 1:
            raise ValueError(
                f"val_fraction must be strictly between 0 and 1, got {self.val_fraction}"
            )
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in 0..2**64-1, got {self.seed}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def is_validation_document(doc_id: str, val_fraction: float) -> bool:
    """Whether a document belongs to the val split: a pure function of its id, so adding
    documents to the corpus never moves existing ones between splits."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8, person=b"lmforge/split")
    return int.from_bytes(digest.digest(), "big") < val_fraction * 2**64


def shuffle_key(doc_id: str, seed: int) -> int:
    """A document's position key in the seeded shuffle of its split (sort ascending)."""
    digest = hashlib.blake2b(
        doc_id.encode("utf-8"),
        digest_size=8,
        person=b"lmforge/order",
        salt=seed.to_bytes(16, "big"),
    )
    return int.from_bytes(digest.digest(), "big")


def token_dtype(vocab: int) -> np.dtype:
    """uint16 holds ids 0..65535, so a vocabulary of up to 65,536 tokens fits in it."""
    return np.dtype(np.uint16) if vocab <= 2**16 else np.dtype(np.uint32)


def shard_schema(vocab: int, eot_id: int) -> pa.Schema:
    value_type = pa.uint16() if token_dtype(vocab) == np.uint16 else pa.uint32()
    return pa.schema(
        [("doc_id", pa.string()), ("tokens", pa.list_(value_type))],
        metadata={VOCAB_SIZE_KEY: str(vocab).encode(), EOT_ID_KEY: str(eot_id).encode()},
    )


# --- reading the data stage's output ---------------------------------------------------------


def document_files(data_dir: str | Path) -> list[Path]:
    """The data stage's `docs/*.parquet` files; ShardError (naming the path) if the directory is
    not a finished data stage output or holds no documents."""
    data_dir = Path(data_dir)
    read_manifest(data_dir)  # raises ManifestError naming data_dir when it is not a stage output
    files = sorted((data_dir / "docs").glob("*.parquet"))
    if not files:
        raise ShardError(f"{data_dir / 'docs'} has no *.parquet files: run `lmforge data refresh`")
    for path in files:
        columns = set(pq.read_schema(path).names)
        if missing := [c for c in DOCUMENT_COLUMNS if c not in columns]:
            raise ShardError(f"{path} lacks the column(s) {', '.join(missing)}")
    if sum(pq.ParquetFile(path).metadata.num_rows for path in files) == 0:
        raise ShardError(f"{data_dir / 'docs'} holds no documents: nothing to tokenize")
    return files


def iter_document_batches(
    files: list[Path], batch_size: int
) -> Iterator[tuple[list[str], list[str], list[str | None]]]:
    """(ids, texts, langs) in file order, `batch_size` rows at a time; texts are valid UTF-8 and
    rows with a null or empty text are dropped (counted by the caller from the totals)."""
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(
            batch_size=batch_size, columns=DOCUMENT_COLUMNS
        ):
            rows = zip(*(batch.column(name).to_pylist() for name in DOCUMENT_COLUMNS), strict=True)
            kept = [(i, to_valid_utf8(t), lang) for i, t, lang in rows if t]
            if kept:
                ids, texts, langs = (list(column) for column in zip(*kept))
                yield ids, texts, langs


# --- tokenizing one split into a temporary token stream ----------------------------------------


@dataclass
class SplitStream:
    """Tokens of one split in corpus order, appended to a temporary file, plus per-document
    bookkeeping needed to write shards in shuffled order."""

    token_file: Path
    dtype: np.dtype
    handle: BinaryIO | None = None
    doc_ids: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    text_bytes: int = 0
    tokens_by_language: Counter = field(default_factory=Counter)

    def append(
        self,
        ids: list[str],
        token_lists: list[list[int]],
        texts_bytes: list[int],
        langs: list[str | None],
        keys: list[int],
    ) -> None:
        if self.handle is None:
            self.handle = open(self.token_file, "wb")
        lengths = [len(tokens) for tokens in token_lists]
        flat = np.fromiter(chain.from_iterable(token_lists), dtype=self.dtype, count=sum(lengths))
        self.handle.write(flat.tobytes())
        self.doc_ids += ids
        self.lengths += lengths
        self.keys += keys
        self.text_bytes += sum(texts_bytes)
        for lang, length in zip(langs, lengths, strict=True):
            self.tokens_by_language[lang or UNKNOWN_LANGUAGE] += length

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


def tokenize_into_streams(
    files: list[Path], tokenizer: Tokenizer, params: ShardParams, streams: dict[str, SplitStream]
) -> int:
    """Tokenize every non-empty document into its split's stream; returns how many there were."""
    documents = 0
    try:
        for ids, texts, langs in iter_document_batches(files, params.batch_size):
            documents += len(ids)
            token_lists = encode_documents(tokenizer, texts)
            split_of = [
                "val" if is_validation_document(doc_id, params.val_fraction) else "train"
                for doc_id in ids
            ]
            for split, stream in streams.items():
                if chosen := [k for k, name in enumerate(split_of) if name == split]:
                    stream.append(
                        ids=[ids[k] for k in chosen],
                        token_lists=[token_lists[k] for k in chosen],
                        texts_bytes=[len(texts[k].encode("utf-8")) for k in chosen],
                        langs=[langs[k] for k in chosen],
                        keys=[shuffle_key(ids[k], params.seed) for k in chosen],
                    )
    finally:
        for stream in streams.values():
            stream.close()
    return documents


# --- writing shards ----------------------------------------------------------------------------


def write_shard(
    path: Path, schema: pa.Schema, doc_ids: list[str], lengths: list[int], values: np.ndarray
) -> None:
    """One Arrow IPC file holding one record batch: readers can memory-map the token buffer."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    batch = pa.record_batch([pa.array(doc_ids, pa.string()), tokens], schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(batch)


Piece = tuple[int, int, int]  # (document index, start, stop) in a split's token file


def pack_into_shards(
    order: np.ndarray, starts: np.ndarray, lengths: np.ndarray, shard_tokens: int
) -> Iterator[list[Piece]]:
    """Lay documents end to end in `order` and cut the stream every `shard_tokens` tokens:
    yields each shard's pieces; a document crossing a cut becomes two (or more) pieces."""
    pieces: list[Piece] = []
    filled = 0
    for doc in order:
        position, remaining = int(starts[doc]), int(lengths[doc])
        while remaining:
            take = min(remaining, shard_tokens - filled)
            pieces.append((int(doc), position, position + take))
            position, remaining, filled = position + take, remaining - take, filled + take
            if filled == shard_tokens:
                yield pieces
                pieces, filled = [], 0
    if pieces:
        yield pieces


def write_split_shards(
    stream: SplitStream, out_dir: Path, schema: pa.Schema, shard_tokens: int
) -> int:
    """Write the stream's documents in shuffled order, cut into shards of exactly `shard_tokens`
    tokens (the last one shorter); returns the number of shard files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens = np.memmap(stream.token_file, dtype=stream.dtype, mode="r")
    lengths = np.asarray(stream.lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    order = np.argsort(np.asarray(stream.keys, dtype=np.uint64), kind="stable")
    shards = 0
    for pieces in pack_into_shards(order, starts, lengths, shard_tokens):
        write_shard(
            out_dir / f"shard-{shards:05d}.arrow",
            schema,
            [stream.doc_ids[doc] for doc, _, _ in pieces],
            [stop - start for _, start, stop in pieces],
            np.concatenate([tokens[start:stop] for _, start, stop in pieces]),
        )
        shards += 1
    del tokens  # release the memory map before the temporary file is removed
    return shards


# --- the stage ---------------------------------------------------------------------------------


def build_shards(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    vocab_size: int = ShardParams.vocab_size,
    min_frequency: int = ShardParams.min_frequency,
    shard_tokens: int = ShardParams.shard_tokens,
    val_fraction: float = ShardParams.val_fraction,
    seed: int = ShardParams.seed,
    tokenizer_path: str | Path | None = None,
    batch_size: int = ShardParams.batch_size,
) -> dict[str, Any]:
    """Tokenize the data stage output `data_dir` into a shards directory `out_dir`.

    Trains a byte-level BPE on the train split's documents (or copies `tokenizer_path`), splits
    documents into train/val by a hash of their id, shuffles each split with `seed`, and writes
    shards per the "Token shards" contract, atomically (`out_dir` appears only when complete).
    Returns the manifest written to `out_dir/manifest.json`.

    Raises ManifestError if `data_dir` is not a finished data stage output, ShardError if it holds
    no documents or either split would be empty, TokenizerError for an unusable tokenizer_path,
    ValueError for invalid parameters.
    """
    data_dir = Path(data_dir)
    params = ShardParams(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        shard_tokens=shard_tokens,
        val_fraction=val_fraction,
        seed=seed,
        tokenizer_path=str(tokenizer_path) if tokenizer_path is not None else None,
        batch_size=batch_size,
    )
    files = document_files(data_dir)
    inputs: list[str | Path] = [data_dir] + ([Path(tokenizer_path)] if tokenizer_path else [])

    with stage_output(out_dir, STAGE, asdict(params), inputs=inputs) as stage:
        tokenizer_file = stage.path / TOKENIZER_FILE
        if tokenizer_path is not None:
            tokenizer = load_tokenizer(tokenizer_path)
            shutil.copyfile(tokenizer_path, tokenizer_file)  # byte-identical: same sha256
        else:
            tokenizer = train_tokenizer(
                train_split_texts(files, params), TokenizerConfig(vocab_size, min_frequency)
            )
            tokenizer.save(str(tokenizer_file))
        vocab, special = tokenizer_vocab_size(tokenizer), special_token_ids(tokenizer)
        dtype = token_dtype(vocab)
        log.info("tokenizer ready: %d tokens, shards hold %s", vocab, dtype)

        work_dir = stage.path / ".tokens"  # removed before the manifest lists the outputs
        work_dir.mkdir()
        streams = {split: SplitStream(work_dir / f"{split}.bin", dtype) for split in SPLITS}
        tokenized = tokenize_into_streams(files, tokenizer, params, streams)
        for split, stream in streams.items():
            if not stream.doc_ids:
                raise ShardError(
                    f"no document of {data_dir} fell into the {split} split "
                    f"({tokenized} documents, val_fraction={val_fraction}): "
                    "change val_fraction or add documents"
                )

        schema = shard_schema(vocab, special.eot_id)
        splits: dict[str, dict[str, Any]] = {}
        for split, stream in streams.items():
            shards = write_split_shards(stream, stage.path / split, schema, shard_tokens)
            splits[split] = {
                "tokens": stream.tokens,
                "bytes": stream.text_bytes,
                "documents": len(stream.doc_ids),
                "shards": shards,
                "tokens_by_language": dict(sorted(stream.tokens_by_language.items())),
            }
        shutil.rmtree(work_dir)

        rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
        stage.counts.update(
            documents_in_data=rows,
            documents_skipped_empty=rows - tokenized,
            **{
                f"{split}_{key}": splits[split][key]
                for split in SPLITS
                for key in ("documents", "tokens")
            },
        )
        stage.extra.update(
            tokenizer={
                "sha256": tokenizer_sha256(tokenizer_file),
                "vocab_size": vocab,
                "eot_id": special.eot_id,
                "pad_id": special.pad_id,
            },
            token_dtype=dtype.name,
            splits=splits,
            source_manifest_sha256=manifest_digest(data_dir),
        )
    return read_manifest(out_dir)


def train_split_texts(files: list[Path], params: ShardParams) -> Iterator[str]:
    """The texts of the train split, streamed, for tokenizer training (val never shapes it)."""
    for ids, texts, _ in iter_document_batches(files, params.batch_size):
        for doc_id, text in zip(ids, texts, strict=True):
            if not is_validation_document(doc_id, params.val_fraction):
                yield text


# --- checking a shards directory ---------------------------------------------------------------


def verify_shards(shards_dir: str | Path) -> dict[str, Any]:
    """Check that a shards directory is whole and self-consistent; return its manifest.

    Checks, in order: the tokenizer loads and matches the manifest's vocab/eot; every shard's
    schema metadata (vocab size, eot id) and token type match the tokenizer; the shard count of
    each split matches the manifest; every output's sha256 matches the manifest. Raises
    ShardError / ManifestError / TokenizerError naming the offending file.
    """
    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    tokenizer_file = shards_dir / TOKENIZER_FILE
    tokenizer = load_tokenizer(tokenizer_file)
    vocab, eot_id = tokenizer_vocab_size(tokenizer), special_token_ids(tokenizer).eot_id
    recorded = manifest.get("tokenizer", {})
    if (recorded.get("vocab_size"), recorded.get("eot_id")) != (vocab, eot_id):
        raise ShardError(
            f"{tokenizer_file} has {vocab} tokens (eot {eot_id}) but "
            f"{shards_dir / 'manifest.json'} "
            f"records {recorded.get('vocab_size')} (eot {recorded.get('eot_id')}): "
            "the tokenizer was replaced; rebuild the shards"
        )
    expected = shard_schema(vocab, eot_id)
    for split in SPLITS:
        paths = sorted((shards_dir / split).glob(SHARD_GLOB))
        if len(paths) != manifest["splits"][split]["shards"]:
            raise ShardError(
                f"{shards_dir / split} holds {len(paths)} shards, the manifest lists "
                f"{manifest['splits'][split]['shards']}"
            )
        for path in paths:
            schema = _read_shard_schema(path)
            if schema.metadata != expected.metadata:
                raise ShardError(
                    f"{path} was written for vocab_size={_meta(schema, VOCAB_SIZE_KEY)}, "
                    f"eot_id={_meta(schema, EOT_ID_KEY)} but {tokenizer_file} has "
                    f"vocab_size={vocab}, eot_id={eot_id}: "
                    "shards and tokenizer do not belong together"
                )
            if not schema.equals(expected):
                raise ShardError(f"{path} has schema {schema}, expected {expected}")
    verify_outputs(shards_dir)
    return manifest


def _read_shard_schema(path: Path) -> pa.Schema:
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).schema
    except (pa.ArrowInvalid, OSError) as error:
        raise ShardError(f"{path} is not a readable Arrow IPC file: {error}") from error


def _meta(schema: pa.Schema, key: bytes) -> str | None:
    value = (schema.metadata or {}).get(key)
    return value.decode() if value is not None else None
