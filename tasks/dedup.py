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

Memory: one row of band hashes per document (8 bytes x bands) plus the shingle sets of
documents that still have unverified candidate pairs; the documents are read twice (signatures,
then shingles of candidate documents only), never held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from datasketch import MinHash
from lmforge.tasks.filters.text_units import (
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
# Rows of the (shingles x permutations) matrix computed at once: bounds the transient memory of
# a huge document to ~8 MiB at 112 permutations.
SIGNATURE_CHUNK = 8192
_ROW_BASE = np.uint64(0x9E3779B97F4A7C15)


# Which language decides how a document is shingled (see MinHashConfig).
SHINGLE_LANGUAGE_SOURCES = ("detected", "declared")


@dataclass(frozen=True)
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

    ngram: int = 5
    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    threshold: float = 0.8
    seed: int = 1
    char_shingle_languages: tuple[str, ...] = ("zh", "ja", "ko", "th")
    shingle_language: str = "detected"

    def __post_init__(self) -> None:
        if self.shingle_language not in SHINGLE_LANGUAGE_SOURCES:
            raise ValueError(
                f"shingle_language must be one of {', '.join(SHINGLE_LANGUAGE_SOURCES)}, got "
                f"{self.shingle_language!r}"
            )
        if self.bands * self.rows != self.num_perm:
            raise ValueError(
                f"MinHash bands x rows must equal num_perm: {self.bands} x {self.rows} "
                f"!= {self.num_perm}"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"MinHash threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1:
            raise ValueError(f"shingle size ngram must be at least 1, got {self.ngram}")

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

    Signatures come from datasketch's batch API, one `update_batch` per chunk of a document's
    shingle hashes (datasketch applies all permutations to a chunk in one numpy operation), so
    they are exactly `datasketch.MinHash` values: interchangeable with its LSH classes."""

    def __init__(self, config: MinHashConfig):
        self.config = config
        # Drawing the permutations is the costly part of a MinHash: draw once, copies share them.
        self.empty = MinHash(
            num_perm=config.num_perm, seed=config.seed, scheme="affine64", hashfunc=int
        )
        self.band_salts = mix64(np.arange(config.bands, dtype=np.uint64) + np.uint64(config.seed))

    def signature(self, shingle_hashes: np.ndarray) -> np.ndarray:
        """(num_perm,) uint64 from the shingle hashes (repeats do not matter); all ones (the
        maximum) for an empty shingle set."""
        sketch = self.empty.copy()
        for start in range(0, len(shingle_hashes), SIGNATURE_CHUNK):
            sketch.update_batch(shingle_hashes[start : start + SIGNATURE_CHUNK].tolist())
        return sketch.hashvalues.astype(np.uint64, copy=False)

    def bands(self, signature: np.ndarray) -> np.ndarray:
        """(bands,) uint64: each band's `rows` values folded into one hash."""
        rows = signature.reshape(self.config.bands, self.config.rows)
        combined = np.zeros(self.config.bands, np.uint64)
        for column in range(self.config.rows):
            combined = combined * _ROW_BASE + rows[:, column]
        return mix64(combined ^ self.band_salts)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The share of equal signature values: an unbiased estimate of the Jaccard similarity."""
    return float(np.mean(a == b))


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


@dataclass
class _Batch:
    """What the first pass keeps per document of this run (n = len(ids))."""

    ids: list[str] = field(default_factory=list)
    source_rank: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    band_bytes: bytearray = field(default_factory=bytearray)  # 8 x bands bytes per document
    has_bands: list[bool] = field(default_factory=list)
    exact_pairs: list[tuple[int, int]] = field(default_factory=list)  # global node numbers


def find_duplicates(
    documents: Iterable[DedupDocument],
    config: MinHashConfig = MinHashConfig(),
    prior: PriorDocuments | None = None,
) -> DuplicateReport:
    """Find exact and near duplicates among `documents` and against the `prior` kept
    documents (see the module docstring for the rule).

    `documents` is iterated twice and must give the same documents in the same order both
    times (a list, or a reader that re-opens its files). Ids must be unique: a repeated id
    raises ValueError. Nodes are numbered prior rows first (0..p-1), then this run's
    documents (p..p+n-1), so a smaller number is always a document seen earlier.
    """
    prior = prior if prior is not None else _NoPriorDocuments()
    offset = len(prior.keys)
    hasher = MinHasher(config)
    batch = _first_pass(documents, config, prior, hasher, offset)
    n = len(batch.ids)
    bands = np.frombuffer(bytes(batch.band_bytes), np.uint64).reshape(n, config.bands)
    has_bands = np.array(batch.has_bands, bool)
    candidate_pairs = _candidate_pairs(prior, bands, has_bands, offset)
    verified = _verified_pairs(documents, config, prior, candidate_pairs, offset)

    removed, survivors_of = _clusters(batch, verified, offset)
    prior_survivors = sorted({node for node in survivors_of.values() if node < offset})
    survivor_ids = dict(zip(prior_survivors, prior.ids(prior_survivors), strict=True))
    prior_keys = prior.keys

    def node_id(node: int) -> str:
        return survivor_ids[node] if node < offset else batch.ids[node - offset]

    def node_key(node: int) -> bytes:
        return prior_keys[node].tobytes() if node < offset else batch.keys[node - offset]

    duplicates = []
    for index in sorted(removed):
        survivor = survivors_of[index]
        same_text = node_key(survivor) == batch.keys[index - offset]
        reason = EXACT_DUPLICATE if same_text else NEAR_DUPLICATE
        duplicates.append(Duplicate(batch.ids[index - offset], node_id(survivor), reason))
    duplicates.sort(key=lambda d: d.id)

    cluster_sizes: dict[int, int] = {}
    for index, survivor in survivors_of.items():
        cluster_sizes[survivor] = cluster_sizes.get(survivor, 1) + 1
    keep = np.array([offset + i not in removed for i in range(n)], bool)
    kept = KeptSignatures(
        ids=[doc_id for doc_id, k in zip(batch.ids, keep, strict=True) if k],
        keys=key_array(batch.keys)[keep],
        bands=bands[keep],
        has_bands=has_bands[keep],
    )
    stats = {
        "documents": n,
        "prior_documents": offset,
        "exact_duplicates": sum(d.reason == EXACT_DUPLICATE for d in duplicates),
        "near_duplicates": sum(d.reason == NEAR_DUPLICATE for d in duplicates),
        "candidate_pairs": len(candidate_pairs),
        "verified_pairs": len(verified),
        "clusters": len(cluster_sizes),
        "largest_cluster": max(cluster_sizes.values(), default=0),
    }
    return DuplicateReport(duplicates, stats, kept)


def _first_pass(
    documents: Iterable[DedupDocument],
    config: MinHashConfig,
    prior: PriorDocuments,
    hasher: MinHasher,
    offset: int,
) -> _Batch:
    """Ids, keys and band hashes; exact pairs within a file and with earlier documents."""
    batch = _Batch()
    seen_ids: set[str] = set()
    source_rank: dict[str, int] = {}
    # key -> first node with that key in each file: exact pairs reach back to every file,
    # and clustering ignores those whose earlier document was removed.
    first_with_key: dict[bytes, list[int]] = {}
    prior_order = np.lexsort((prior.keys[:, 1], prior.keys[:, 0]))
    sorted_prior_keys = prior.keys[prior_order]
    sorted_high = np.ascontiguousarray(sorted_prior_keys[:, 0])
    empty_bands = bytes(8 * config.bands)
    for index, document in enumerate(documents):
        if document.id in seen_ids:
            raise ValueError(f"document id {document.id!r} occurs twice in the dedup input")
        seen_ids.add(document.id)
        node = offset + index
        rank = source_rank.setdefault(document.source, len(source_rank))
        key = normalised_text_key(document.text, shingle_family(document.lang, config))
        batch.ids.append(document.id)
        batch.source_rank.append(rank)
        batch.keys.append(key)
        high, low = np.frombuffer(key, "<u8")
        at = int(np.searchsorted(sorted_high, high))
        while at < len(sorted_prior_keys) and sorted_prior_keys[at, 0] == high:
            if sorted_prior_keys[at, 1] == low:  # kept documents never share a key
                batch.exact_pairs.append((int(prior_order[at]), node))
                break
            at += 1
        earlier = first_with_key.setdefault(key, [])
        batch.exact_pairs.extend((other, node) for other in earlier)
        if earlier and batch.source_rank[earlier[-1] - offset] == rank:
            # Not the first with its text in this file: it joins that one's cluster.
            batch.band_bytes += empty_bands
            batch.has_bands.append(False)
            continue
        earlier.append(node)
        hashes = shingle_hashes(document.text, document.lang, config)
        if len(hashes):
            batch.band_bytes += hasher.bands(hasher.signature(hashes)).tobytes()
            batch.has_bands.append(True)
        else:
            batch.band_bytes += empty_bands
            batch.has_bands.append(False)
    return batch


def _candidate_pairs(
    prior: PriorDocuments, bands: np.ndarray, has_bands: np.ndarray, offset: int
) -> np.ndarray:
    """(m, 2) int64 node pairs (earlier, later) that share a band hash, at least one of them
    from this run; found by sorting each band's hashes, so no per-bucket Python dicts."""
    prior_nodes = np.flatnonzero(prior.has_bands)
    batch_nodes = np.flatnonzero(has_bands)
    nodes = np.concatenate((prior_nodes, batch_nodes + offset))
    pairs = []
    for band in range(bands.shape[1]):
        values = np.concatenate((prior.bands[prior_nodes, band] if len(prior_nodes) else
                                 np.zeros(0, np.uint64), bands[batch_nodes, band]))  # fmt: skip
        order = np.argsort(values, kind="stable")
        sorted_values = values[order]
        boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
        for run in np.split(order, boundaries):
            if len(run) < 2:
                continue
            members = np.sort(nodes[run])
            if members[-1] < offset:
                continue  # only prior documents: paired before
            for gap in range(1, min(len(members), BUCKET_WINDOW + 1)):
                pair = np.stack((members[:-gap], members[gap:]), axis=1)
                pairs.append(pair[pair[:, 1] >= offset])
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def _verified_pairs(
    documents: Iterable[DedupDocument],
    config: MinHashConfig,
    prior: PriorDocuments,
    candidate_pairs: np.ndarray,
    offset: int,
) -> list[tuple[int, int]]:
    """Candidate pairs whose exact Jaccard similarity reaches the threshold.

    Streams the documents once more in order and checks each pair when its later document
    arrives; a shingle set is dropped as soon as its last pair is checked, so memory holds
    only documents with pairs still open."""
    if len(candidate_pairs) == 0:
        return []
    order = np.lexsort((candidate_pairs[:, 0], candidate_pairs[:, 1]))
    candidate_pairs = candidate_pairs[order]
    last_use: dict[int, int] = {}
    for earlier, later in candidate_pairs.tolist():
        last_use[earlier] = max(last_use.get(earlier, 0), later)
        last_use[later] = max(last_use.get(later, 0), later)
    cache = prior.shingle_sets(sorted({node for node in last_use if node < offset}))
    pairs_of_later: dict[int, list[int]] = {}
    for earlier, later in candidate_pairs.tolist():
        pairs_of_later.setdefault(later, []).append(earlier)
    verified = []
    for index, document in enumerate(documents):
        node = offset + index
        if node not in last_use:
            continue
        cache[node] = shingles(document.text, document.lang, config)
        for earlier in pairs_of_later.get(node, []):
            if jaccard(cache[earlier], cache[node]) >= config.threshold:
                verified.append((earlier, node))
            if last_use[earlier] <= node:
                cache.pop(earlier, None)
        if last_use[node] <= node:
            cache.pop(node, None)
    return verified


def _clusters(
    batch: _Batch, verified: list[tuple[int, int]], offset: int
) -> tuple[set[int], dict[int, int]]:
    """File by file in input order: join each file's documents with their pairs in the file
    and with documents kept earlier; the survivor is the cluster's earliest node. Returns the
    removed nodes and {removed node: survivor node}."""
    pairs_by_rank: dict[int, list[tuple[int, int]]] = {}
    for earlier, later in batch.exact_pairs + verified:
        pairs_by_rank.setdefault(batch.source_rank[later - offset], []).append((earlier, later))
    removed: set[int] = set()
    survivors_of: dict[int, int] = {}
    for rank in sorted(pairs_by_rank):
        clusters = _UnionFind()
        for earlier, later in pairs_by_rank[rank]:
            earlier_is_kept = earlier < offset or earlier not in removed
            same_file = earlier >= offset and batch.source_rank[earlier - offset] == rank
            if same_file or earlier_is_kept:
                clusters.union(earlier, later)
        for node in list(clusters.parent):
            root = clusters.find(node)
            if node != root and node >= offset and batch.source_rank[node - offset] == rank:
                removed.add(node)
                survivors_of[node] = root
    return removed, survivors_of
