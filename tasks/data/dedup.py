"""Exact and near-duplicate removal: normalised-text hashes, then MinHash LSH with verification,
against everything kept before.

`DedupDocument.lang` puts each document in a shingle family - characters for Chinese, Japanese,
Korean and Thai, words otherwise - and documents are only compared within their family.

1. Exact: documents of one family whose lower-cased, whitespace-collapsed text is equal share
   one key.
2. Near: the first document with each key (per input file) gets a MinHash signature over its
   shingles (word 5-grams, or character 5-grams), cut into
   LSH bands. Documents sharing a band hash are candidate pairs; each candidate pair's *exact*
   Jaccard similarity over the shingle sets is computed and the pair kept only at or above the
   threshold, because pages that share a site template score 0.4-0.8 and are not copies.
3. Clusters, one input file (`DedupDocument.source`) at a time, in input order: the file's exact
   and verified pairs with its own documents and with documents *kept* before it (earlier files,
   earlier dataset versions: the `PriorDocuments` index) are joined with union-find.
   **Survivor rule: the document seen first** - an earlier kept document if the cluster has
   one (the earliest), otherwise the file's earliest member. Every other member is removed with
   `duplicate_of` = the survivor and reason `exact_duplicate` (same normalised text as the
   survivor) or `near_duplicate`.

Because a file only ever meets the documents kept before it, the state that carries over is
the kept documents alone: deduplicating files A then B in two runs against an index of A's kept
documents, or A and B in one run, or B against an index rebuilt from A's kept documents, gives
the same result. The price: a chain through a document removed in an *earlier file* (new ~
removed ~ kept, new not ~ kept) is not followed.

Memory: fixed-width rows per document of the run, about what the index holds - the id packed
in UTF-8 (+ 8 bytes), the key (16 bytes), flags and file rank (5 bytes), band hashes (8 bytes
x bands, documents with shingles only); pairs are int64 arrays, found and joined by sorting.
The documents are read twice (signatures, then shingles of candidate documents only), never
held; the shingle sets of documents with pairs still to check are held up to
SHINGLE_MEMORY_BYTES, the rest in a temporary file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from array import array
from collections.abc import Iterable, Sequence
from itertools import chain
from dataclasses import dataclass, field
from typing import IO, Literal, Protocol

import numpy as np
from datasketch import MinHash
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as config_dataclass
from lmforge.tasks.data.filters.text_units import (
    TextUnits,
    char_shingle_hashes,
    mix64,
    word_shingle_hashes,
)

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
KEY_BYTES = 16
# A band bucket larger than this (thousands of pages sharing a band: boilerplate) pairs each
# member with the BUCKET_WINDOW members before it only, instead of all k^2 / 2 pairs; copies
# among them are still joined transitively through their neighbours.
BUCKET_WINDOW = 256
# Shingles per (permutations x shingles) matrix computed at once: bounds the transient memory of
# a huge document to ~8 MiB at 112 permutations.
SIGNATURE_CHUNK = 8192
# Band hashes of a run are stored in blocks of this many documents (1.75 MiB at 14 bands):
# appending never copies what is stored, and the blocks are freed one by one at the end.
ROWS_PER_BLOCK = 16384
# Shingle sets waiting for a later pair are held in memory up to this many bytes, the rest in
# a temporary file; prior documents' sets are read this many at a time.
SHINGLE_MEMORY_BYTES = 256 * 2**20
PRIOR_SETS_PER_READ = 4096
_ROW_BASE = np.uint64(0x9E3779B97F4A7C15)


# Which language decides how a document is shingled (see MinHashConfig).
SHINGLE_LANGUAGE_SOURCES = ("detected", "declared")


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class MinHashConfig:
    """Near-duplicate settings: `num_perm` = `bands` x `rows` permutations (14 x 8 puts the LSH
    S-curve's midpoint near 0.72, so pairs at 0.8 are found with probability ~0.9, and the
    `threshold` check on exact Jaccard removes the false candidates).

    `shingle_language`: which language puts a document in the character-shingled family
    (`char_shingle_languages`) or the word-shingled one. `detected` (default): the language
    identified from its text, so a page's copies meet whatever site or locale serves them.
    `declared`: the language the page is published under (HTTP Content-Language, `<html
    lang>`, a locale in its URL; see `declared_language`), the detected one where it declares
    none - an English page left untranslated in a Korean manual stays with the Korean
    manual's pages and is not removed for its copy in the English manual. Documents are only
    ever compared within one family, in the exact stage too."""

    ngram: int = Field(5, ge=1, description="Shingle size, in words (characters for zh, ja, ...).")
    num_perm: int = Field(112, ge=1, description="MinHash permutations; must equal bands x rows.")
    bands: int = Field(14, ge=1, description="LSH bands.")
    rows: int = Field(8, ge=1, description="Rows per LSH band.")
    threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Jaccard similarity from which a page is a duplicate."
    )
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations.")
    char_shingle_languages: tuple[str, ...] = Field(
        ("zh", "ja", "ko", "th"), description="Languages shingled by characters, not words."
    )
    shingle_language: Literal["detected", "declared"] = Field(
        "detected",
        description="Which language decides how a page is shingled: detected from its text, or "
        "declared by the page (header, <html lang>, URL locale), else the detected one.",
    )

    def __post_init__(self) -> None:
        if self.bands * self.rows != self.num_perm:
            raise ValueError(
                f"minhash.num_perm must equal bands x rows: {self.bands} x {self.rows} "
                f"!= {self.num_perm}; change bands, rows or num_perm"
            )

    def shingle_language_of(self, detected: str | None, declared: str | None) -> str | None:
        """The language that decides how a document is shingled (see `shingle_language`)."""
        if self.shingle_language == "declared" and declared:
            return declared
        return detected


@dataclass(frozen=True)
class DedupDocument:
    """One candidate: `source` is the input file it came from (documents of one file are
    clustered together; files are taken in the order they first appear)."""

    id: str
    text: str
    lang: str | None = None
    source: str = ""


@dataclass(frozen=True)
class Duplicate:
    """A removed document, the survivor it duplicates, and `exact_duplicate`/`near_duplicate`."""

    id: str
    duplicate_of: str
    reason: str


@dataclass
class KeptSignatures:
    """Index rows of the documents this run keeps, in input order: ids, normalised-text keys
    (`key_array`: two uint64 per key) and band hashes (one row of `bands` values; all zero and
    `has_bands` False for a text without shingles)."""

    ids: list[str]
    keys: np.ndarray
    bands: np.ndarray
    has_bands: np.ndarray

    def row_of(self) -> dict[str, int]:
        return {doc_id: row for row, doc_id in enumerate(self.ids)}


@dataclass
class DuplicateReport:
    """Documents to remove (sorted by id); counts: documents, exact_duplicates,
    near_duplicates, candidate_pairs, verified_pairs, clusters, largest_cluster,
    prior_documents; `kept`: index rows of the kept documents; `base_version`: the dataset
    version deduplicated against (0: none)."""

    duplicates: list[Duplicate] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    kept: KeptSignatures | None = field(default=None, repr=False)
    base_version: int = 0

    def by_id(self) -> dict[str, Duplicate]:
        return {duplicate.id: duplicate for duplicate in self.duplicates}

    def to_dict(self) -> dict:
        return {
            "duplicates": [vars(d) for d in self.duplicates],
            "stats": dict(self.stats),
            "base_version": self.base_version,
        }


class PriorDocuments(Protocol):
    """Documents kept before this run, in the order they were seen (row i before row i + 1)."""

    keys: np.ndarray  # (n, 2) uint64: normalised-text keys (see `key_array`)
    bands: np.ndarray  # (n, bands) uint64
    has_bands: np.ndarray  # (n,) bool

    def ids(self, rows: Sequence[int]) -> list[str]: ...

    def shingle_sets(self, rows: Sequence[int]) -> dict[int, np.ndarray]: ...


def shingle_family(lang: str | None, config: MinHashConfig) -> str:
    """`chars` for the languages shingled by characters, `words` for the others."""
    return "chars" if lang in config.char_shingle_languages else "words"


def normalised_text_key(text: str, family: str = "words") -> bytes:
    """128-bit digest of the lower-cased text with whitespace runs collapsed, personalised by
    the shingle family so that exact matching stays inside a family as near matching does."""
    normalised = " ".join(text.lower().split())
    return hashlib.blake2b(
        normalised.encode("utf-8"), digest_size=KEY_BYTES, person=family.encode("ascii")
    ).digest()


def key_array(keys: Sequence[bytes]) -> np.ndarray:
    """Normalised-text keys as an (n, 2) uint64 array (numpy's bytes dtype would drop trailing
    zero bytes)."""
    return np.frombuffer(b"".join(keys), "<u8").reshape(len(keys), 2).copy()


def shingle_hashes(text: str, lang: str | None, config: MinHashConfig) -> np.ndarray:
    """64-bit hashes of the document's shingles (lower-cased), repeats included: character
    n-grams for `config.char_shingle_languages`, word n-grams otherwise."""
    if lang in config.char_shingle_languages:
        return char_shingle_hashes(text, config.ngram)
    return word_shingle_hashes(TextUnits(text), config.ngram)


def shingles(text: str, lang: str | None, config: MinHashConfig) -> np.ndarray:
    """Sorted unique 64-bit hashes of the document's shingles: the set Jaccard is taken over."""
    return np.unique(shingle_hashes(text, lang, config))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique hash arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common)


class MinHasher:
    """MinHash signatures (datasketch's `affine64` scheme: 64-bit affine permutations of the
    MurmurHash3-finalised shingle hashes) and LSH band hashes.

    The permutations are datasketch's (drawn by `datasketch.MinHash` from the seed), applied
    here in numpy a chunk of shingles at a time as a (permutations x shingles) matrix reduced
    along its rows: exactly `datasketch.MinHash` values, interchangeable with its LSH classes,
    2.5x faster (it calls `hashfunc` once per value in Python and reduces across rows). Repeated shingles are not removed first: sorting costs more than permuting them.
    One per thread: signatures share a buffer."""

    def __init__(self, config: MinHashConfig):
        self.config = config
        # Drawing the permutations is the costly part of a MinHash: draw once.
        permutations = MinHash(
            num_perm=config.num_perm, seed=config.seed, scheme="affine64", hashfunc=int
        ).permutations
        self.multipliers, self.offsets = (row[:, None].astype(np.uint64) for row in permutations)
        self.band_salts = mix64(np.arange(config.bands, dtype=np.uint64) + np.uint64(config.seed))

    def signature(self, shingle_hashes: np.ndarray) -> np.ndarray:
        """(num_perm,) uint64 from the shingle hashes (repeats do not matter); all ones (the
        maximum) for an empty shingle set."""
        values = murmur3_finalise(shingle_hashes.astype(np.uint64, copy=False))
        signature = np.full(self.config.num_perm, np.iinfo(np.uint64).max, np.uint64)
        for start in range(0, len(values), SIGNATURE_CHUNK):
            chunk = values[None, start : start + SIGNATURE_CHUNK]
            permuted = self._matrix[:, : chunk.shape[1]]
            np.multiply(self.multipliers, chunk, out=permuted)
            permuted += self.offsets  # uint64 arithmetic wraps: the scheme's modulo 2^64
            np.minimum(signature, permuted.min(axis=1), out=signature)
        return signature

    @functools.cached_property
    def _matrix(self) -> np.ndarray:
        # One buffer for every signature: a fresh 7 MiB matrix per document is mapped and
        # faulted in anew where malloc returns memory eagerly, as Dask's workers make it do
        # (MALLOC_TRIM_THRESHOLD_), which made signatures there 40% slower.
        return np.empty((self.config.num_perm, SIGNATURE_CHUNK), np.uint64)

    def bands(self, signature: np.ndarray) -> np.ndarray:
        """(bands,) uint64: each band's `rows` values folded into one hash."""
        rows = signature.reshape(self.config.bands, self.config.rows)
        combined = np.zeros(self.config.bands, np.uint64)
        for column in range(self.config.rows):
            combined = combined * _ROW_BASE + rows[:, column]
        return mix64(combined ^ self.band_salts)


def murmur3_finalise(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (datasketch's pre-mix before its affine permutations)."""
    x = values ^ (values >> np.uint64(33))
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


class _NoPriorDocuments:
    keys = np.zeros((0, 2), np.uint64)
    bands = np.zeros((0, 0), np.uint64)
    has_bands = np.zeros(0, bool)

    def ids(self, rows: Sequence[int]) -> list[str]:
        return []

    def shingle_sets(self, rows: Sequence[int]) -> dict[int, np.ndarray]:
        return {}


class _UnionFind:
    """Union-find over arbitrary integer nodes; the root of a set is its smallest node."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        root = item
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(item, item) != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


class _PackedIds:
    """Document ids back to back in UTF-8 with each one's end offset: len(id) + 8 bytes a
    document, where a list of str costs ~60 bytes more."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends = array("q")

    def __len__(self) -> int:
        return len(self.ends)

    def append(self, doc_id: str) -> None:
        self.data += doc_id.encode("utf-8", "surrogatepass")
        self.ends.append(len(self.data))

    def get(self, row: int) -> str:
        start = self.ends[row - 1] if row else 0
        return self.data[start : self.ends[row]].decode("utf-8", "surrogatepass")

    def select(self, keep: np.ndarray) -> list[str]:
        """The ids of the rows where `keep`, in order."""
        return [self.get(row) for row, chosen in enumerate(keep.tolist()) if chosen]

    def first_repeated(self) -> str | None:
        """The id whose second occurrence comes first, or None when all ids are unique.

        Compares 64-bit hashes by sorting (8 bytes a document, briefly), then the ids of the
        few rows whose hash is not unique."""
        view = memoryview(self.data)
        starts = chain((0,), self.ends)  # zip stops at the last end
        hashes = np.fromiter(
            (hash(bytes(view[start:end])) for start, end in zip(starts, self.ends)),
            np.int64,
            count=len(self.ends),
        )
        view.release()  # a live export would stop the buffer from growing or shrinking
        order = np.argsort(hashes, kind="stable")
        sorted_hashes = hashes[order]
        shared = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
        seen: set[str] = set()
        for row in np.unique(np.concatenate((order[shared], order[shared + 1]))).tolist():
            doc_id = self.get(row)
            if doc_id in seen:
                return doc_id
            seen.add(doc_id)
        return None


class _BandRows:
    """Band hashes of the documents that have any, appended a row at a time into blocks of
    ROWS_PER_BLOCK rows: no growing array is ever copied, and `move_to` frees the blocks one by
    one as it gathers the kept rows."""

    def __init__(self, bands: int):
        self.bands = bands
        self.blocks: list[np.ndarray | None] = []
        self.count = 0

    def append(self, row: np.ndarray) -> None:
        at = self.count % ROWS_PER_BLOCK
        if at == 0:
            # Zeroed blocks are mapped lazily: the last one costs memory only as it fills.
            self.blocks.append(np.zeros((ROWS_PER_BLOCK, self.bands), np.uint64))
        self.blocks[-1][at] = row
        self.count += 1

    def _block(self, number: int) -> np.ndarray:
        return self.blocks[number][: min(ROWS_PER_BLOCK, self.count - number * ROWS_PER_BLOCK)]

    def column(self, band: int) -> np.ndarray:
        """(count,) uint64: one band's hash of every row."""
        parts = [self._block(number)[:, band] for number in range(len(self.blocks))]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def move_to(self, keep: np.ndarray, out: np.ndarray, out_rows: np.ndarray) -> None:
        """Copy the rows where `keep` (one bool a row) to `out[out_rows]`, in order, freeing
        each block once copied: the store is empty afterwards."""
        written = 0
        for number in range(len(self.blocks)):
            start = number * ROWS_PER_BLOCK
            rows = self._block(number)
            self.blocks[number] = None
            chosen = rows[keep[start : start + len(rows)]]
            out[out_rows[written : written + len(chosen)]] = chosen
            written += len(chosen)
        self.blocks, self.count = [], 0


class _LatestFirstWithKey:
    """Normalised-text key -> the latest row of this run that was the first with that key in
    its file. An open-addressing table (linear probing, at most two thirds full) of row numbers
    only, 8 bytes a slot: the keys are read from the run's key buffer."""

    def __init__(self, keys: bytearray, slots: int = 1024):
        self.keys = keys
        self.slots = array("q", [-1]) * slots
        self.used = 0

    def _slot(self, key: bytes) -> int:
        mask = len(self.slots) - 1
        slot = int.from_bytes(key[:8], "little") & mask  # keys are uniform hashes already
        keys = self.keys
        while (row := self.slots[slot]) >= 0:
            if keys[KEY_BYTES * row : KEY_BYTES * (row + 1)] == key:
                break
            slot = (slot + 1) & mask
        return slot

    def get(self, key: bytes) -> int:
        """The row, or -1 when no row has this key."""
        return self.slots[self._slot(key)]

    def set(self, key: bytes, row: int) -> None:
        slot = self._slot(key)
        if self.slots[slot] < 0:
            self.used += 1
            if 3 * self.used > 2 * len(self.slots):
                self._grow()
                slot = self._slot(key)
        self.slots[slot] = row

    def _grow(self) -> None:
        old, self.slots = self.slots, array("q", [-1]) * (2 * len(self.slots))
        mask = len(self.slots) - 1
        for row in old:
            if row >= 0:
                slot = int.from_bytes(self.keys[KEY_BYTES * row : KEY_BYTES * row + 8], "little")
                slot &= mask
                while self.slots[slot] >= 0:
                    slot = (slot + 1) & mask
                self.slots[slot] = row


# Bits of `_RunRows.flags`.
HAS_BANDS = 1  # the document has shingles, so band hashes (in `_RunRows.bands`)
FIRST_IN_FILE = 2  # the first with its key in its file (see `_first_pass`): MinHashed


@dataclass
class _RunRows:
    """What the first pass keeps per document of this run, fixed width but for the ids: about
    len(id) + 8 + 16 (key) + 1 (flags) + 4 (file rank) bytes, + 8 x bands for those with band
    hashes."""

    ids: _PackedIds
    keys: bytearray  # KEY_BYTES a document
    flags: bytearray  # HAS_BANDS | FIRST_IN_FILE
    ranks: array  # int32: the rank of the document's file (files in order of first appearance)
    bands: _BandRows


def find_duplicates(
    documents: Iterable[DedupDocument],
    config: MinHashConfig = MinHashConfig(),
    prior: PriorDocuments | None = None,
    remove: bool = True,
) -> DuplicateReport:
    """Find exact and near duplicates among `documents` and against the `prior` kept
    documents (see the module docstring for the rule). `remove=False` finds none: every
    document is kept, with the signatures an index needs (an ablation's no-dedup variant).

    `documents` is iterated twice and must give the same documents in the same order both
    times (a list, or a reader that re-opens its files). Ids must be unique: a repeated id
    raises ValueError (after the first pass). Nodes are numbered prior rows first (0..p-1),
    then this run's documents (p..p+n-1), so a smaller number is always a document seen
    earlier.
    """
    prior = prior if prior is not None else _NoPriorDocuments()
    offset = len(prior.keys)
    run = _first_pass(documents, config, MinHasher(config))
    repeated = run.ids.first_repeated()
    if repeated is not None:
        raise ValueError(f"document id {repeated!r} occurs twice in the dedup input")
    n = len(run.ids)
    keys = np.frombuffer(run.keys, "<u8").reshape(n, 2)
    flags = np.frombuffer(run.flags, np.uint8)
    has_bands = (flags & HAS_BANDS) != 0
    ranks = np.frombuffer(run.ranks, np.intc)
    if remove:
        exact = _exact_pairs(keys, (flags & FIRST_IN_FILE) != 0, prior, offset)
        candidate_pairs = _candidate_pairs(prior, run.bands, has_bands, offset)
        verified = _verified_pairs(documents, config, prior, candidate_pairs, offset)
    else:  # nothing is compared: every document survives
        exact = candidate_pairs = verified = np.empty((0, 2), np.int64)
    survivor = _survivors(np.concatenate((exact, verified)), ranks, offset)
    del exact

    removed = np.flatnonzero(survivor >= 0)
    survivors = survivor[removed]
    from_prior = survivors < offset
    survivor_keys = np.empty((len(removed), 2), np.uint64)
    survivor_keys[from_prior] = prior.keys[survivors[from_prior]]
    survivor_keys[~from_prior] = keys[survivors[~from_prior] - offset]
    same_text = (survivor_keys == keys[removed]).all(axis=1)
    prior_survivors = np.unique(survivors[from_prior]).tolist()
    survivor_ids = dict(zip(prior_survivors, prior.ids(prior_survivors), strict=True))
    duplicates = []
    for row, node, exact_copy in zip(removed.tolist(), survivors.tolist(), same_text.tolist()):
        survivor_id = survivor_ids[node] if node < offset else run.ids.get(node - offset)
        reason = EXACT_DUPLICATE if exact_copy else NEAR_DUPLICATE
        duplicates.append(Duplicate(run.ids.get(row), survivor_id, reason))
    duplicates.sort(key=lambda d: d.id)
    _, cluster_sizes = np.unique(survivors, return_counts=True)
    stats = {
        "documents": n,
        "prior_documents": offset,
        "exact_duplicates": int(np.count_nonzero(same_text)),
        "near_duplicates": int(len(same_text) - np.count_nonzero(same_text)),
        "candidate_pairs": len(candidate_pairs),
        "verified_pairs": len(verified),
        "clusters": len(cluster_sizes),
        "largest_cluster": int(cluster_sizes.max()) + 1 if len(cluster_sizes) else 0,
    }
    return DuplicateReport(duplicates, stats, _kept(run, keys, has_bands, survivor < 0))


def _kept(
    run: _RunRows, keys: np.ndarray, has_bands: np.ndarray, keep: np.ndarray
) -> KeptSignatures:
    """Index rows of the documents where `keep`; moves the band hashes out of `run.bands`."""
    kept_has_bands = has_bands[keep]
    bands = np.zeros((len(kept_has_bands), run.bands.bands), np.uint64)
    run.bands.move_to(keep[has_bands], bands, np.flatnonzero(kept_has_bands))
    return KeptSignatures(run.ids.select(keep), keys[keep], bands, kept_has_bands)


def _first_pass(
    documents: Iterable[DedupDocument], config: MinHashConfig, hasher: MinHasher
) -> _RunRows:
    """Ids, keys, file ranks and the band hashes of the documents that are the first with
    their key in their file (the others join that one's cluster unhashed)."""
    run = _RunRows(_PackedIds(), bytearray(), bytearray(), array("i"), _BandRows(config.bands))
    source_rank: dict[str, int] = {}
    latest_first = _LatestFirstWithKey(run.keys)
    for index, document in enumerate(documents):
        rank = source_rank.setdefault(document.source, len(source_rank))
        key = normalised_text_key(document.text, shingle_family(document.lang, config))
        run.ids.append(document.id)
        run.keys += key
        run.ranks.append(rank)
        latest = latest_first.get(key)
        if latest >= 0 and run.ranks[latest] == rank:
            # Not the first with its text in this file: it joins that one's cluster.
            run.flags.append(0)
            continue
        latest_first.set(key, index)
        hashes = shingle_hashes(document.text, document.lang, config)
        if len(hashes):
            run.bands.append(hasher.bands(hasher.signature(hashes)))
            run.flags.append(FIRST_IN_FILE | HAS_BANDS)
        else:
            run.flags.append(FIRST_IN_FILE)
    return run


def _exact_pairs(
    keys: np.ndarray, first_in_file: np.ndarray, prior: PriorDocuments, offset: int
) -> np.ndarray:
    """(m, 2) int64 node pairs (earlier, later) with the same normalised-text key: each
    document with the prior document of its key, and with every earlier document of this run
    that was the first with its key in its file (exact pairs reach back to every file, and
    clustering ignores those whose earlier document was removed)."""
    return np.concatenate(
        (_prior_exact_pairs(keys, prior, offset), _run_exact_pairs(keys, first_in_file, offset))
    )


def _prior_exact_pairs(keys: np.ndarray, prior: PriorDocuments, offset: int) -> np.ndarray:
    if not len(keys) or not len(prior.keys):
        return np.zeros((0, 2), np.int64)
    prior_order = np.lexsort((prior.keys[:, 1], prior.keys[:, 0]))
    sorted_high = prior.keys[prior_order, 0]
    sorted_low = prior.keys[prior_order, 1]
    prior_row = np.full(len(keys), -1, np.int64)
    at = np.searchsorted(sorted_high, keys[:, 0])
    pending = np.flatnonzero(at < len(sorted_high))
    while len(pending):  # one step for all but 64-bit collisions of the keys' first halves
        spot = at[pending]
        same_high = sorted_high[spot] == keys[pending, 0]
        pending, spot = pending[same_high], spot[same_high]
        found = sorted_low[spot] == keys[pending, 1]  # kept documents never share a key
        prior_row[pending[found]] = prior_order[spot[found]]
        pending = pending[~found]
        at[pending] += 1
        pending = pending[at[pending] < len(sorted_high)]
    rows = np.flatnonzero(prior_row >= 0)
    return np.stack((prior_row[rows], rows + offset), axis=1)


def _run_exact_pairs(keys: np.ndarray, first_in_file: np.ndarray, offset: int) -> np.ndarray:
    n = len(keys)
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # stable: rows ascending within a key
    sorted_keys = keys[order]
    starts_group = np.ones(n + 1, bool)
    starts_group[1:n] = (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)
    del sorted_keys
    starts = np.flatnonzero(starts_group)
    group_end = np.repeat(starts[1:], np.diff(starts))
    after = group_end - np.arange(n)  # 1 + the rows after this one with the same key
    firsts = np.flatnonzero(first_in_file[order] & (after > 1))
    counts = after[firsts] - 1
    total = int(counts.sum())
    # Each first-in-file row pairs with every later row of its key: positions firsts + 1 ...
    step = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    later = order[np.repeat(firsts + 1, counts) + step]
    earlier = np.repeat(order[firsts], counts)
    return np.stack((earlier, later), axis=1).astype(np.int64) + offset


def _candidate_pairs(
    prior: PriorDocuments, bands: _BandRows, has_bands: np.ndarray, offset: int
) -> np.ndarray:
    """(m, 2) int64 node pairs (earlier, later), sorted and unique, that share a band hash, at
    least one of them from this run; found by sorting each band's hashes."""
    prior_nodes = np.flatnonzero(prior.has_bands)
    nodes = np.concatenate((prior_nodes, np.flatnonzero(has_bands) + offset))
    pairs = np.zeros((0, 2), np.int64)
    for band in range(bands.bands):
        prior_values = prior.bands[prior_nodes, band] if len(prior_nodes) else np.zeros(0, "<u8")
        values = np.concatenate((prior_values, bands.column(band)))
        pairs = _unique_pairs(np.concatenate((pairs, _bucket_pairs(values, nodes, offset))))
    return pairs


def _bucket_pairs(values: np.ndarray, nodes: np.ndarray, offset: int) -> np.ndarray:
    """Pairs of `nodes` (ascending) with equal `values`: each member of a bucket with the
    BUCKET_WINDOW members before it, keeping the pairs whose later node is from this run."""
    order = np.argsort(values, kind="stable")  # stable: nodes ascending within a bucket
    sorted_values = values[order]
    same_as_next = sorted_values[1:] == sorted_values[:-1]
    del sorted_values
    in_bucket = np.zeros(len(values), bool)
    in_bucket[:-1] |= same_as_next
    in_bucket[1:] |= same_as_next
    positions = np.flatnonzero(in_bucket)
    members = nodes[order[positions]]
    begins = np.ones(len(positions), bool)
    begins[1:] = ~same_as_next[positions[1:] - 1]
    starts = np.append(np.flatnonzero(begins), len(positions))
    after = np.repeat(starts[1:], np.diff(starts)) - np.arange(len(positions)) - 1
    found = []
    active = np.flatnonzero(after > 0)
    for gap in range(1, BUCKET_WINDOW + 1):
        active = active[after[active] >= gap]
        if not len(active):
            break
        later = members[active + gap]
        from_run = later >= offset
        found.append(np.stack((members[active[from_run]], later[from_run]), axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def _unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """The distinct rows of an (m, 2) array, sorted by first then second column."""
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    distinct = np.ones(len(pairs), bool)
    distinct[1:] = (pairs[1:] != pairs[:-1]).any(axis=1)
    return pairs[distinct]


def _verified_pairs(
    documents: Iterable[DedupDocument],
    config: MinHashConfig,
    prior: PriorDocuments,
    candidate_pairs: np.ndarray,
    offset: int,
) -> np.ndarray:
    """(v, 2) int64: the candidate pairs (sorted by earlier node) whose exact Jaccard
    similarity reaches the threshold, sorted by later node.

    Streams the documents once more in order and checks each pair when its later document
    arrives; a shingle set is dropped as soon as its last pair is checked, so only documents
    with pairs still open are held (beyond SHINGLE_MEMORY_BYTES, in a temporary file). Stops
    reading after the last document in a pair."""
    if len(candidate_pairs) == 0:
        return np.zeros((0, 2), np.int64)
    earlier = candidate_pairs[:, 0]
    # An earlier document's set is dropped after its pair with its latest partner.
    last_of_earlier = np.ones(len(earlier), bool)
    last_of_earlier[:-1] = earlier[1:] != earlier[:-1]
    opens = np.unique(earlier)  # documents needed after their own turn
    batch_opens = opens[opens >= offset] - offset
    prior_opens = opens[opens < offset]
    del opens
    order = np.lexsort((earlier, candidate_pairs[:, 1]))
    pairs, drop_earlier = candidate_pairs[order], last_of_earlier[order]
    del order, earlier, last_of_earlier
    later_rows = pairs[:, 1] - offset
    verified = np.zeros(len(pairs), bool)
    with _OpenShingleSets(SHINGLE_MEMORY_BYTES) as open_sets:
        for start in range(0, len(prior_opens), PRIOR_SETS_PER_READ):
            rows = prior_opens[start : start + PRIOR_SETS_PER_READ].tolist()
            for node, shingle_set in prior.shingle_sets(rows).items():
                open_sets.put(node, shingle_set)
        at, opened = 0, 0  # the next pair (by later) and the next entry of batch_opens
        next_later, next_open = int(later_rows[0]), _row_at(batch_opens, 0)
        for row, document in enumerate(documents):
            if row != next_later and row != next_open:
                continue
            current = shingles(document.text, document.lang, config)
            while at < len(pairs) and later_rows[at] == row:
                other = int(pairs[at, 0])
                if jaccard(open_sets.get(other), current) >= config.threshold:
                    verified[at] = True
                if drop_earlier[at]:
                    open_sets.drop(other)
                at += 1
            if row == next_open:  # the earlier document of pairs to come
                open_sets.put(offset + row, current)
                opened += 1
                next_open = _row_at(batch_opens, opened)
            next_later = int(later_rows[at]) if at < len(pairs) else -1
            if next_later < 0 and next_open < 0:
                break
    return pairs[verified]


class _OpenShingleSets:
    """Shingle sets of the documents that still have pairs to check, by node: in memory up to
    `memory_bytes`, the rest in a temporary file until their pair comes (copies far apart in
    a large crawl would otherwise each hold a set for most of the run)."""

    def __init__(self, memory_bytes: int):
        self.memory_bytes = memory_bytes
        self.in_memory: dict[int, np.ndarray] = {}
        self.held = 0
        self.on_disk: dict[int, tuple[int, int]] = {}  # node -> (byte offset, values)
        self.file: IO[bytes] | None = None

    def __enter__(self) -> _OpenShingleSets:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.file is not None:
            self.file.close()  # a TemporaryFile is deleted on close

    def put(self, node: int, shingle_set: np.ndarray) -> None:
        if self.held + shingle_set.nbytes <= self.memory_bytes:
            self.in_memory[node] = shingle_set
            self.held += shingle_set.nbytes
            return
        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="lmforge-dedup-shingles-")
        self.file.seek(0, os.SEEK_END)
        self.on_disk[node] = (self.file.tell(), len(shingle_set))
        self.file.write(np.ascontiguousarray(shingle_set, "<u8").tobytes())

    def get(self, node: int) -> np.ndarray:
        if node in self.in_memory:
            return self.in_memory[node]
        start, values = self.on_disk[node]
        self.file.seek(start)
        return np.frombuffer(self.file.read(8 * values), "<u8")

    def drop(self, node: int) -> None:
        """Forget a set (its bytes in the file are not reused: the file only grows)."""
        if node in self.in_memory:
            self.held -= self.in_memory.pop(node).nbytes
        else:
            del self.on_disk[node]


def _row_at(rows: np.ndarray, at: int) -> int:
    return int(rows[at]) if at < len(rows) else -1


def _survivors(pairs: np.ndarray, ranks: np.ndarray, offset: int) -> np.ndarray:
    """File by file in input order: join each file's documents with their pairs in the file
    and with documents kept earlier; the survivor is the cluster's earliest node. Returns
    (n,) int64: each removed document's survivor node, -1 for a kept one."""
    survivor = np.full(len(ranks), -1, np.int64)
    if not len(pairs):
        return survivor
    later_rank = ranks[pairs[:, 1] - offset]
    order = np.argsort(later_rank, kind="stable")
    pairs, later_rank = pairs[order], later_rank[order]
    bounds = np.flatnonzero(np.concatenate(([True], later_rank[1:] != later_rank[:-1], [True])))
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        rank = int(later_rank[start])
        earlier, later = pairs[start:end, 0], pairs[start:end, 1]
        # Documents removed in files before this one are passed over; this file's own
        # documents are all still kept here (its removals are decided below).
        in_run = earlier >= offset
        joined = ~in_run | (survivor[np.where(in_run, earlier - offset, 0)] < 0)
        clusters = _UnionFind()
        for a, b in zip(earlier[joined].tolist(), later[joined].tolist(), strict=True):
            clusters.union(a, b)
        for node in list(clusters.parent):
            if node >= offset and ranks[node - offset] == rank:
                survivor[node - offset] = clusters.find(node)
    return survivor
