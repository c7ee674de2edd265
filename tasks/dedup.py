"""Exact and near-duplicate removal: normalised-text hashes, then MinHash LSH with verification.

1. Exact: documents whose lower-cased, whitespace-collapsed text is equal share one key.
2. Near: one representative per exact key gets a MinHash signature over its shingles (word
   5-grams; character 5-grams for Chinese, Japanese, Korean and Thai). LSH bands propose
   candidate pairs; each candidate pair's *exact* Jaccard similarity over the shingle sets is
   computed and the pair kept only at or above the threshold, because pages that share a site
   template score 0.4-0.8 and are not copies of each other.
3. Clusters: exact groups and verified pairs are joined with union-find (transitively). Each
   cluster keeps one survivor: the longest text, ties broken by the smallest id, so the
   result does not depend on input order or on which worker saw which file. Every other member
   is removed with `duplicate_of` = the survivor and reason `exact_duplicate` (same normalised
   text as the survivor) or `near_duplicate`.

The documents are iterated twice (signatures, then shingles of the candidate documents only),
so memory holds one signature per document plus the shingle sets of documents in candidate
pairs, never the whole corpus's text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from lmforge.tasks.filters.text_units import TextUnits, char_shingle_hashes, word_shingle_hashes

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"


@dataclass(frozen=True)
class MinHashConfig:
    """Near-duplicate settings: `num_perm` = `bands` x `rows` permutations (14 x 8 puts the LSH
    S-curve's midpoint near 0.72, so pairs at 0.8 are found with probability ~0.9, and the
    `threshold` check on exact Jaccard removes the false candidates)."""

    ngram: int = 5
    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    threshold: float = 0.8
    seed: int = 1
    char_shingle_languages: tuple[str, ...] = ("zh", "ja", "ko", "th")

    def __post_init__(self) -> None:
        if self.bands * self.rows != self.num_perm:
            raise ValueError(
                f"MinHash bands x rows must equal num_perm: {self.bands} x {self.rows} "
                f"!= {self.num_perm}"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"MinHash threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1:
            raise ValueError(f"shingle size ngram must be at least 1, got {self.ngram}")


@dataclass(frozen=True)
class DedupDocument:
    id: str
    text: str
    lang: str | None = None


@dataclass(frozen=True)
class Duplicate:
    """A removed document, the survivor it duplicates, and `exact_duplicate`/`near_duplicate`."""

    id: str
    duplicate_of: str
    reason: str


@dataclass
class DuplicateReport:
    """Documents to remove (sorted by id) and counts: documents, exact_duplicates,
    near_duplicates, candidate_pairs, verified_pairs, clusters, largest_cluster."""

    duplicates: list[Duplicate] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def by_id(self) -> dict[str, Duplicate]:
        return {duplicate.id: duplicate for duplicate in self.duplicates}

    def to_dict(self) -> dict:
        return asdict(self)


def normalised_text_key(text: str) -> bytes:
    """128-bit digest of the lower-cased text with whitespace runs collapsed."""
    normalised = " ".join(text.lower().split())
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()


def shingles(text: str, lang: str | None, config: MinHashConfig) -> np.ndarray:
    """Sorted unique 64-bit hashes of the document's shingles (lower-cased)."""
    if lang in config.char_shingle_languages:
        hashes = char_shingle_hashes(text, config.ngram)
    else:
        hashes = word_shingle_hashes(TextUnits(text), config.ngram)
    return np.unique(hashes)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique hash arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common)


def _as_hash_value(value: int) -> int:
    return value


class MinHasher:
    """MinHash signatures with datasketch's permutations, fed whole shingle arrays at once."""

    def __init__(self, config: MinHashConfig):
        self.config = config
        # Drawing the permutations is costly: draw them once; copies share them.
        self.empty = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=_as_hash_value)

    def signature(self, shingle_hashes: np.ndarray) -> LeanMinHash:
        sketch = self.empty.copy()
        # datasketch's permutations take 32-bit hash values: the high half of ours.
        sketch.update_batch((shingle_hashes >> np.uint64(32)).tolist())
        return LeanMinHash(sketch)


class _UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def find_duplicates(
    documents: Iterable[DedupDocument], config: MinHashConfig = MinHashConfig()
) -> DuplicateReport:
    """Find exact and near duplicates among `documents` (see the module docstring).

    `documents` is iterated twice and must give the same documents in the same order both
    times (a list, or a reader that re-opens its files). Ids must be unique: a repeated id
    raises ValueError.
    """
    ids: list[str] = []
    lengths: list[int] = []
    keys: list[bytes] = []
    first_with_key: dict[bytes, int] = {}
    lsh = MinHashLSH(num_perm=config.num_perm, params=(config.bands, config.rows))
    hasher = MinHasher(config)
    position: dict[str, int] = {}
    exact_pairs: list[tuple[int, int]] = []
    signatures: dict[int, LeanMinHash] = {}

    for index, document in enumerate(documents):
        if document.id in position:
            raise ValueError(f"document id {document.id!r} occurs twice in the dedup input")
        position[document.id] = index
        ids.append(document.id)
        lengths.append(len(document.text))
        key = normalised_text_key(document.text)
        keys.append(key)
        if key in first_with_key:
            exact_pairs.append((first_with_key[key], index))
            continue
        first_with_key[key] = index
        shingle_hashes = shingles(document.text, document.lang, config)
        if len(shingle_hashes):
            signature = hasher.signature(shingle_hashes)
            signatures[index] = signature
            lsh.insert(index, signature, check_duplication=False)

    candidate_pairs: set[tuple[int, int]] = set()
    for index, signature in signatures.items():
        for other in lsh.query(signature):
            if other != index:
                candidate_pairs.add((min(index, other), max(index, other)))

    needed = {index for pair in candidate_pairs for index in pair}
    shingle_sets: dict[int, np.ndarray] = {}
    if needed:
        for index, document in enumerate(documents):
            if index in needed:
                shingle_sets[index] = shingles(document.text, document.lang, config)
    verified = [
        (a, b)
        for a, b in sorted(candidate_pairs)
        if jaccard(shingle_sets[a], shingle_sets[b]) >= config.threshold
    ]

    clusters = _UnionFind(len(ids))
    for a, b in exact_pairs + verified:
        clusters.union(a, b)
    members: dict[int, list[int]] = {}
    for index in range(len(ids)):
        members.setdefault(clusters.find(index), []).append(index)

    duplicates: list[Duplicate] = []
    cluster_sizes = [len(group) for group in members.values() if len(group) > 1]
    for group in members.values():
        if len(group) == 1:
            continue
        survivor = min(group, key=lambda i: (-lengths[i], ids[i]))
        for index in group:
            if index != survivor:
                reason = EXACT_DUPLICATE if keys[index] == keys[survivor] else NEAR_DUPLICATE
                duplicates.append(Duplicate(ids[index], ids[survivor], reason))
    duplicates.sort(key=lambda d: d.id)
    stats = {
        "documents": len(ids),
        "exact_duplicates": sum(d.reason == EXACT_DUPLICATE for d in duplicates),
        "near_duplicates": sum(d.reason == NEAR_DUPLICATE for d in duplicates),
        "candidate_pairs": len(candidate_pairs),
        "verified_pairs": len(verified),
        "clusters": len(cluster_sizes),
        "largest_cluster": max(cluster_sizes, default=0),
    }
    return DuplicateReport(duplicates, stats)
