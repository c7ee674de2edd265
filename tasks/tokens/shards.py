"""Token shards: the data stage's documents -> a byte-level BPE -> Arrow IPC shards per split.

Layout of a shards directory (the "Token shards" contract; the shard files' format is owned by
`lmforge.model.shard_format`, which the training loader reads with):

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

The tokenizer trains on a sample of the train split drawn with per-language shares
(`LanguageSampling`), so that a dominant language does not take the whole vocabulary.
Documents are then encoded in batches by the Rust tokenizer's thread pool and streamed to one
temporary token file per split before being written out in shuffled order.

Data mixing (`mix_source_weights`, `mix_language_weights`; arithmetic in `mixing`) repeats or
thins train documents by weight. The split is decided first, by id hash: val stays the
unweighted held-out set, every document once, so models trained on different mixes are scored
on the same data, and a document repeated in train can never reach val. Each copy of a
document gets its own shuffle key, so copies land apart like any two documents. The tokenizer
sample ignores the mixing weights: one vocabulary serves every mix of a dataset.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tokenizers import Encoding, Tokenizer, pre_tokenizers

from lmforge.tasks.data.dataset_versions import (
    dataset_doc_files,
    document_batches,
    partition_language,
)

from lmforge.manifest import (
    ManifestError,
    manifest_digest,
    read_manifest,
    stage_output,
    verify_outputs,
)
from lmforge.model.shard_format import (
    EOT_ID_KEY,
    MAX_SHARD_TOKENS,
    SHARD_PATTERN,
    TOKENIZER_FILE,
    VOCAB_SIZE_KEY,
    TokenDataError,
    read_shard_schema,
    shard_name,
    shard_schema,
    token_dtype,
    write_shard,
)
from lmforge.recipes import parse_language_mapping
from lmforge.tasks.tokens.mixing import MixingWeights, MixTally, check_weights
from lmforge.tasks.tokens.tokenizer import (
    SPECIAL_TOKENS,
    LanguageSampling,
    TokenizerConfig,
    flatten_encodings,
    load_tokenizer,
    special_token_ids,
    to_valid_utf8,
    tokenizer_sha256,
    tokenizer_vocab_size,
    train_tokenizer,
)

log = logging.getLogger(__name__)

STAGE = "build_shards"
SPLITS = ("train", "val")
DOCUMENT_COLUMNS = ["id", "text", "lang"]
SOURCE_COLUMN = "source"  # the URL host; optional (nulls when absent) unless sources are weighted
UNKNOWN_LANGUAGE = "und"  # BCP 47 "undetermined", for documents without a language tag
# A byte-level BPE holds every byte and the special tokens before its first merge.
MIN_VOCAB_SIZE = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)

T = TypeVar("T")


class ShardError(ManifestError):
    """A shards directory, or the data it is built from, is unusable; the message names the file."""


class ShardConfig(BaseModel):
    """Everything that decides a shards directory: the tokenizer (trained, or reused from
    `tokenizer_path`), its training sample, the train/val split, the shuffle and the shard size.
    Recorded verbatim in the manifest. Invalid values raise ValidationError naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(
        8192, ge=MIN_VOCAB_SIZE, le=1 << 20,
        description="BPE vocabulary size (ignored when tokenizer_path names a tokenizer).",
    )  # fmt: skip
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency for a BPE merge.")
    shard_tokens: int = Field(
        1 << 24, ge=1, le=MAX_SHARD_TOKENS,
        description="Tokens per shard file (the last shard of a split is shorter).",
    )  # fmt: skip
    val_fraction: float = Field(
        0.05, gt=0.0, lt=1.0, description="Share of documents (by id hash) held out for validation."
    )
    seed: int = Field(0, ge=0, lt=2**64, description="Seed of the document shuffle.")
    tokenizer_path: str | None = Field(
        None, description="Reuse this tokenizer.json instead of training one (skips BPE training)."
    )
    # The Rust tokenizer parallelises within a batch over RAYON_NUM_THREADS threads (default:
    # one per core); TOKENIZERS_PARALLELISM=false makes it serial.
    batch_size: int = Field(1024, ge=1, description="Documents per tokenizer encode call.")
    sample_bytes: int = Field(
        LanguageSampling.max_bytes, ge=1,
        description="Cap on the UTF-8 bytes of text the tokenizer trains on.",
    )  # fmt: skip
    language_temperature: float = Field(
        LanguageSampling.temperature, gt=0.0, allow_inf_nan=False,
        description="Tokenizer sample share per language ~ bytes^(1/T): 1 keeps the data's mix, "
        "larger flattens it so a dominant language does not swamp the vocabulary.",
    )  # fmt: skip
    language_weights: dict[str, float] | None = Field(
        None,
        description="Explicit tokenizer sample shares, e.g. en=2,de=1 (languages not named are "
        "left out); overrides language_temperature.",
    )
    max_repeats: int = Field(
        LanguageSampling.max_repeats, ge=1,
        description="Most times a small language's documents repeat in the sample.",
    )  # fmt: skip
    sample_seed: int = Field(
        LanguageSampling.seed, ge=0, lt=2**64,
        description="Seed of the tokenizer sample (separate, so reshuffling keeps the vocabulary).",
    )  # fmt: skip
    mix_source_weights: dict[str, float] | None = Field(
        None,
        description="Data mixing: weight per source (URL host) of train documents, e.g. "
        "`docs.python.org=3,*=0.5` (`*`: every source not named, default 1). A document of "
        "weight w = source x language weight enters floor(w) times plus once with probability "
        "frac(w); 0 drops it. val is never weighted.",
    )
    mix_language_weights: dict[str, float] | None = Field(
        None,
        description="Data mixing: weight per language of train documents, e.g. `en=0.5,de=2` "
        "(`*`: every language not named, default 1); multiplies mix_source_weights. Unlike "
        "language_weights it shapes the shards, not the tokenizer sample.",
    )
    mix_seed: int = Field(
        0, ge=0, lt=2**64,
        description="Seed of the mixing draws for fractional weights (separate, so reshuffling "
        "keeps the mix).",
    )  # fmt: skip

    @field_validator("language_weights", mode="before")
    @classmethod
    def _parse_language_weights(cls, value: object) -> object:
        return parse_language_mapping(value, "language weight", "LANG=WEIGHT (e.g. en=2,de=1)")

    @field_validator("language_weights")
    @classmethod
    def _check_language_weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            LanguageSampling(weights=value)  # finite, >= 0, some language with a share
        return value

    @field_validator("mix_source_weights", "mix_language_weights", mode="before")
    @classmethod
    def _parse_mix_weights(cls, value: object) -> object:
        value = parse_language_mapping(value, "mix weight", "NAME=WEIGHT (e.g. en=2,*=0.5)")
        if isinstance(value, dict) and (
            bad := {k: w for k, w in value.items() if isinstance(w, bool) or w is None}
        ):
            raise ValueError(f"mix weights must be numbers, got {bad}")  # pydantic takes True as 1
        return value

    @field_validator("mix_source_weights", "mix_language_weights")
    @classmethod
    def _check_mix_weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return check_weights(value)  # finite, >= 0, not all 0; an empty mapping is None

    def mixing_weights(self) -> MixingWeights:
        return MixingWeights(self.mix_source_weights, self.mix_language_weights, self.mix_seed)

    def language_sampling(self) -> LanguageSampling:
        return LanguageSampling(
            temperature=self.language_temperature,
            weights=self.language_weights,
            max_bytes=self.sample_bytes,
            max_repeats=self.max_repeats,
            seed=self.sample_seed,
        )

    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig(self.vocab_size, self.min_frequency)


def is_validation_document(doc_id: str, val_fraction: float) -> bool:
    """Whether a document belongs to the val split: a pure function of its id, so adding
    documents to the corpus never moves existing ones between splits."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8, person=b"lmforge/split")
    return int.from_bytes(digest.digest(), "big") < val_fraction * 2**64


def shuffle_key(doc_id: str, seed: int, copy: int = 0) -> int:
    """A document's position key in the seeded shuffle of its split (sort ascending); each
    `copy` that mixing makes of it gets its own key, so copies land apart."""
    digest = hashlib.blake2b(
        doc_id.encode("utf-8"),
        digest_size=8,
        person=b"lmforge/order",
        salt=((copy << 64) | seed).to_bytes(16, "big"),  # seed < 2**64: copy 0 keys as before
    )
    return int.from_bytes(digest.digest(), "big")


# --- reading the data stage's output ---------------------------------------------------------


def document_files(data_dir: str | Path) -> list[Path]:
    """The data stage's `docs/*.parquet` files; ShardError (naming the path) if the directory is
    not a finished data stage output or holds no documents."""
    data_dir = Path(data_dir)
    read_manifest(data_dir)  # raises ManifestError naming data_dir when it is not a stage output
    files = dataset_doc_files(data_dir)  # only the committed versions' files
    if not files:
        raise ShardError(f"{data_dir / 'docs'} has no *.parquet files: run `lmforge data refresh`")
    for path in files:
        columns = set(pq.read_schema(path).names)
        if partition_language(path) is not None:
            columns.add("lang")  # a `lang=xx` directory gives the language
        if missing := [c for c in DOCUMENT_COLUMNS if c not in columns]:
            raise ShardError(f"{path} lacks the column(s) {', '.join(missing)}")
    if sum(pq.ParquetFile(path).metadata.num_rows for path in files) == 0:
        raise ShardError(f"{data_dir / 'docs'} holds no documents: nothing to tokenize")
    return files


def require_source_column(files: list[Path]) -> None:
    """ShardError naming the first file without a `source` column: source weights would find
    no source there and silently weigh its documents as `*`."""
    for path in files:
        if SOURCE_COLUMN not in pq.read_schema(path).names:
            raise ShardError(
                f"{path} lacks the column {SOURCE_COLUMN}, which mix_source_weights needs: "
                "rebuild the dataset with `lmforge data refresh` or drop mix_source_weights"
            )


@dataclass
class DocumentBatch:
    """Documents with text, in file order: ids, texts (valid UTF-8), language tags, sources
    (None when unknown), and the UTF-8 size of each text."""

    ids: list[str]
    texts: list[str]
    langs: list[str]
    sources: list[str | None]
    text_bytes: np.ndarray


def iter_document_batches(files: list[Path], batch_size: int) -> Iterator[DocumentBatch]:
    """The documents of `files`, `batch_size` rows at a time; rows with a null or empty text
    are dropped (counted by the caller from the totals), a missing language becomes `und`."""
    for path in files:
        for batch in document_batches(path, [*DOCUMENT_COLUMNS, SOURCE_COLUMN], batch_size):
            sizes = pc.fill_null(pc.binary_length(batch.column("text")), 0)
            batch = batch.filter(pc.greater(sizes, 0))
            if batch.num_rows:
                yield DocumentBatch(
                    ids=batch.column("id").to_pylist(),
                    texts=[to_valid_utf8(text) for text in batch.column("text").to_pylist()],
                    langs=[lang or UNKNOWN_LANGUAGE for lang in batch.column("lang").to_pylist()],
                    sources=batch.column(SOURCE_COLUMN).to_pylist(),
                    text_bytes=pc.binary_length(batch.column("text")).to_numpy(),
                )


def train_bytes_by_language(files: list[Path], params: ShardConfig) -> Counter[str]:
    """UTF-8 bytes of text per language in the train split (reads lengths, not texts)."""
    sizes: Counter[str] = Counter()
    for path in files:
        for batch in document_batches(path, DOCUMENT_COLUMNS, max(params.batch_size, 8192)):
            text_bytes = pc.fill_null(pc.binary_length(batch.column("text")), 0).to_pylist()
            ids, langs = batch.column("id").to_pylist(), batch.column("lang").to_pylist()
            rows = zip(ids, langs, text_bytes, strict=True)
            for doc_id, lang, size in rows:
                if size and not is_validation_document(doc_id, params.val_fraction):
                    sizes[lang or UNKNOWN_LANGUAGE] += size
    return sizes


@dataclass
class TokenizerSample:
    """What the tokenizer was trained on, tallied while the sample streams past."""

    rates: dict[str, float]
    documents: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {
            "bytes": sum(self.bytes.values()),
            "documents": sum(self.documents.values()),
            "rates": {lang: round(rate, 6) for lang, rate in sorted(self.rates.items())},
            "bytes_by_language": dict(sorted(self.bytes.items())),
            "documents_by_language": dict(sorted(self.documents.items())),
        }


def tokenizer_sample_texts(
    files: list[Path], params: ShardConfig, sampling: LanguageSampling, sample: TokenizerSample
) -> Iterator[str]:
    """The texts the tokenizer trains on: train-split documents, each repeated as often as
    `sampling` draws it at its language's rate (val never shapes the vocabulary)."""
    for batch in iter_document_batches(files, params.batch_size):
        for doc_id, text, lang, size in zip(
            batch.ids, batch.texts, batch.langs, batch.text_bytes.tolist(), strict=True
        ):
            rate = sample.rates.get(lang, 0.0)
            if not rate or is_validation_document(doc_id, params.val_fraction):
                continue
            copies = sampling.copies(doc_id, rate)
            sample.documents[lang] += copies
            sample.bytes[lang] += copies * size
            for _ in range(copies):
                yield text


# --- tokenizing one split into a temporary token stream ----------------------------------------


@dataclass
class SplitStream:
    """Tokens of one split in corpus order, appended to a temporary file once per document
    however many copies mixing makes, plus the bookkeeping needed to write shards in shuffled
    order: per stored document its copies, per copy its shuffle key (document order, then copy
    order), and the tally of every document of the split, dropped ones included."""

    token_file: Path
    dtype: np.dtype
    handle: BinaryIO | None = None
    doc_ids: list[str] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    copies: list[np.ndarray] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)
    tally: MixTally = field(default_factory=MixTally)

    def append(
        self,
        ids: list[str],
        tokens: np.ndarray,
        lengths: np.ndarray,
        copies: np.ndarray,
        keys: list[int],
    ) -> None:
        """Store documents whose tokens lie end to end in `tokens`, `lengths[i]` for `ids[i]`,
        which enter the split `copies[i]` >= 1 times, with `keys` for their copies."""
        if self.handle is None:
            self.handle = open(self.token_file, "wb")
        self.handle.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.doc_ids += ids
        self.lengths.append(lengths)
        self.copies.append(copies)
        self.keys += keys

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def document_lengths(self) -> np.ndarray:
        return np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)

    def document_copies(self) -> np.ndarray:
        return np.concatenate(self.copies) if self.copies else np.zeros(0, dtype=np.int64)

    def counts(self) -> dict[str, Any]:
        """The split's manifest counts as written: every copy counted (tokens, bytes, documents),
        in total and per language."""
        return {
            "tokens": self.tally.total("tokens_after"),
            "bytes": self.tally.total("bytes_after"),
            "documents": self.tally.total("documents_after"),
            **{
                f"{name}_by_language": self.tally.after_by_language(name)
                for name in ("tokens", "bytes", "documents")
            },
        }


def tokenize_into_streams(
    files: list[Path],
    tokenizer: Tokenizer,
    params: ShardConfig,
    streams: dict[str, SplitStream],
    mixing: MixingWeights | None = None,
) -> int:
    """Tokenize every non-empty document into its split's stream; returns how many there were.

    Three stages overlap: a thread reads the next batch of documents, this thread encodes the
    current one (in Rust, on the tokenizer's thread pool, without the GIL), and another thread
    turns the previous batch's encodings into arrays and appends them to the streams. So the
    Python work hides behind encoding instead of leaving the thread pool idle. `mixing`
    (default: the config's) decides the copies of train documents.
    """
    mixing = mixing if mixing is not None else params.mixing_weights()
    eot_id = special_token_ids(tokenizer).eot_id
    documents = 0
    appending: deque[Future[None]] = deque()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="lmforge-append") as appender:
            for batch in read_ahead(iter_document_batches(files, params.batch_size)):
                encodings = tokenizer.encode_batch_fast(batch.texts)
                appending.append(
                    appender.submit(
                        append_batch, batch, encodings, eot_id, params, mixing, streams
                    )
                )
                documents += len(batch.ids)
                while len(appending) > 1:  # at most one batch waits: memory stays flat
                    appending.popleft().result()
            while appending:
                appending.popleft().result()
    finally:
        for stream in streams.values():
            stream.close()
    return documents


def append_batch(
    batch: DocumentBatch,
    encodings: list[Encoding],
    eot_id: int,
    params: ShardConfig,
    mixing: MixingWeights,
    streams: dict[str, SplitStream],
) -> None:
    """Append one encoded batch to the streams of the splits its documents belong to: val
    documents once each, train documents as many times as `mixing` says (0: tallied only)."""
    dtype = next(iter(streams.values())).dtype
    tokens, lengths = flatten_encodings(encodings, eot_id, dtype)
    rows = range(len(batch.ids))
    is_val = np.fromiter(
        (is_validation_document(doc_id, params.val_fraction) for doc_id in batch.ids),
        dtype=bool,
        count=len(batch.ids),
    )
    if mixing.is_uniform:
        copies = np.ones(len(batch.ids), dtype=np.int64)
    else:  # the split is decided first: val is never weighted
        copies = np.fromiter(
            (
                1 if is_val[k] else mixing.copies(batch.ids[k], batch.sources[k], batch.langs[k])
                for k in rows
            ),
            dtype=np.int64,
            count=len(batch.ids),
        )
    buckets = [mixing.source_bucket(source) for source in batch.sources]
    for split, stream in streams.items():
        chosen = is_val if split == "val" else ~is_val
        if not chosen.any():
            continue
        picked = np.flatnonzero(chosen).tolist()
        stream.tally.add(
            [batch.langs[k] for k in picked],
            [buckets[k] for k in picked],
            lengths[chosen],
            batch.text_bytes[chosen],
            copies[chosen],
        )
        kept = chosen & (copies > 0)
        if not kept.any():
            continue
        stored = np.flatnonzero(kept).tolist()
        stream.append(
            ids=[batch.ids[k] for k in stored],
            tokens=tokens[np.repeat(kept, lengths)],
            lengths=lengths[kept],
            copies=copies[kept],
            keys=[
                shuffle_key(batch.ids[k], params.seed, copy)
                for k in stored
                for copy in range(int(copies[k]))
            ],
        )


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """The items of `items`, produced by a background thread up to `depth` items ahead."""
    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="lmforge-read") as reader:
        ahead = deque(reader.submit(next, items, end) for _ in range(depth))
        while (item := ahead.popleft().result()) is not end:
            ahead.append(reader.submit(next, items, end))
            yield item


# --- writing shards ----------------------------------------------------------------------------


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
    """Write the stream's document copies in shuffled order, cut into shards of exactly
    `shard_tokens` tokens (the last one shorter); returns the number of shard files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens = np.memmap(stream.token_file, dtype=stream.dtype, mode="r")
    lengths = stream.document_lengths()
    starts = np.cumsum(lengths) - lengths
    copy_of = np.repeat(np.arange(len(lengths)), stream.document_copies())  # keys' documents
    order = copy_of[np.argsort(np.asarray(stream.keys, dtype=np.uint64), kind="stable")]
    shards = 0
    for pieces in pack_into_shards(order, starts, lengths, shard_tokens):
        write_shard(
            out_dir / shard_name(shards),
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
    data_dir: str | Path, out_dir: str | Path, config: ShardConfig = ShardConfig()
) -> dict[str, Any]:
    """Tokenize the data stage output `data_dir` into a shards directory `out_dir`.

    Trains a byte-level BPE on a sample of the train split drawn with per-language shares (see
    `ShardConfig` and `LanguageSampling`), or copies `config.tokenizer_path`; splits documents
    into train/val by a hash of their id, shuffles each split with `config.seed`, and writes
    shards per the "Token shards" contract, atomically (`out_dir` appears only when complete).
    Train documents are repeated or thinned by the mixing weights (see `mixing`); val is not.
    Returns the manifest written to `out_dir/manifest.json`; its `params` are the config, its
    `tokenizer_sample` records what the tokenizer was trained on, its `splits` the tokens,
    bytes and documents per split and language as written (each copy counted), its `mixing`
    the same per language and per source bucket before and after weighting.

    Raises ManifestError if `data_dir` is not a finished data stage output, ShardError if it holds
    no documents, either split would be empty (train also when the weights drop every
    document), or sources are weighted and a file lacks the `source` column, TokenizerError for
    an unusable tokenizer_path.
    """
    data_dir = Path(data_dir)
    tokenizer_path = config.tokenizer_path
    files = document_files(data_dir)
    if config.mix_source_weights:
        require_source_column(files)
    mixing = config.mixing_weights()
    inputs: list[str | Path] = [data_dir] + ([Path(tokenizer_path)] if tokenizer_path else [])

    with stage_output(out_dir, STAGE, config.model_dump(mode="json"), inputs=inputs) as stage:
        tokenizer_file = stage.path / TOKENIZER_FILE
        sample: TokenizerSample | None = None
        if tokenizer_path is not None:
            tokenizer = load_tokenizer(tokenizer_path)
            shutil.copyfile(tokenizer_path, tokenizer_file)  # byte-identical: same sha256
        else:
            sampling = config.language_sampling()
            sample = TokenizerSample(sampling.rates(train_bytes_by_language(files, config)))
            tokenizer = train_tokenizer(
                tokenizer_sample_texts(files, config, sampling, sample),
                config.tokenizer_config(),
            )
            tokenizer.save(str(tokenizer_file))
            log.info("tokenizer trained on %s", sample.summary())
        vocab, special = tokenizer_vocab_size(tokenizer), special_token_ids(tokenizer)
        dtype = token_dtype(vocab)
        threads = encode_parallelism()
        log.info("tokenizer ready: %d tokens, shards hold %s; encoding on %s", vocab, dtype,
                 threads)

        work_dir = stage.path / ".tokens"  # removed before the manifest lists the outputs
        work_dir.mkdir()
        streams = {split: SplitStream(work_dir / f"{split}.bin", dtype) for split in SPLITS}
        tokenized = tokenize_into_streams(files, tokenizer, config, streams, mixing)
        for split, stream in streams.items():
            if not stream.tally.total("documents_before"):
                raise ShardError(
                    f"no document of {data_dir} fell into the {split} split "
                    f"({tokenized} documents, val_fraction={config.val_fraction}): "
                    "change val_fraction or add documents"
                )
            if not stream.doc_ids:
                raise ShardError(
                    f"the mixing weights drop all {stream.tally.total('documents_before')} "
                    f"{split} documents of {data_dir} (mix_source_weights="
                    f"{config.mix_source_weights}, mix_language_weights="
                    f"{config.mix_language_weights}): give some of its sources and languages "
                    "a weight above 0"
                )

        schema = shard_schema(vocab, special.eot_id)
        splits: dict[str, dict[str, Any]] = {}
        for split, stream in streams.items():
            shards = write_split_shards(stream, stage.path / split, schema, config.shard_tokens)
            counts = stream.counts()
            splits[split] = {
                **{key: counts[key] for key in ("tokens", "bytes", "documents")},
                "shards": shards,
                **{key: counts[key] for key in counts if key.endswith("_by_language")},
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
            tokenizer_sample=sample.summary() if sample is not None else None,
            token_dtype=dtype.name,
            splits=splits,
            mixing={
                split: stream.tally.summary(mixing, weighted=split == "train")
                for split, stream in streams.items()
            },
            source_manifest_sha256=manifest_digest(data_dir),
        )
    return read_manifest(out_dir)


def encode_parallelism() -> str:
    """How the Rust tokenizer will parallelise `encode_batch`, from the variables it reads."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "off", "no"):
        return "1 thread (TOKENIZERS_PARALLELISM is off)"
    threads = os.environ.get("RAYON_NUM_THREADS") or os.environ.get("RAYON_RS_NUM_CPUS")
    return f"{threads} threads (RAYON_NUM_THREADS)" if threads else f"{os.cpu_count()} threads"


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
        paths = sorted((shards_dir / split).glob(SHARD_PATTERN))
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
        return read_shard_schema(path)
    except TokenDataError as error:
        raise ShardError(str(error)) from error


def _meta(schema: pa.Schema, key: bytes) -> str | None:
    value = (schema.metadata or {}).get(key)
    return value.decode() if value is not None else None
