"""Data mixing: how many times each train document enters the token shards, from weights per
source (the URL host in the documents' `source` column) and per language, and the per-bucket
tally of what the weights did.

A document's weight is w = source weight x language weight. A source or language the weights
do not name gets the mapping's `*` entry, or 1.0 when there is none. The document enters
floor(w) times, plus once more with probability frac(w); the draw is a hash of (doc id, seed),
never random state, so a config always gives the same copies and adding documents does not
change the draws of the others. w < 1 thins a bucket (0.25 keeps one document in four), w = 0
drops it, w = 3 repeats each document three times. The expected copies of a document are w.

Mixing applies to the train split only; `lmforge.tasks.tokens.shards` keeps the val split the
unweighted held-out set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmforge.tasks.tokens.tokenizer import document_copies

DEFAULT_BUCKET = "*"  # in a weights mapping: the weight of every bucket not named
# Per bucket, in this order: before weighting (each document once), then after (its copies).
TALLY_FIELDS = (
    "documents_before", "tokens_before", "bytes_before",
    "documents_after", "tokens_after", "bytes_after",
)  # fmt: skip


def check_weights(weights: Mapping[str, float] | None) -> dict[str, float] | None:
    """`weights` as a plain dict (None for no weights, an empty mapping included).

    Raises ValueError for a weight that is not a finite number >= 0, an empty key, or weights
    that give every bucket 0 (a `*` of 0 and every named bucket 0), which would drop everything.
    """
    if not weights:
        return None
    for key, weight in weights.items():
        if not key.strip():
            raise ValueError(f"an empty name cannot be weighted (got {dict(weights)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"the weight of {key!r} must be a number, got {weight!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"the weight of {key!r} must be finite and >= 0, got {weight}")
    if weights.get(DEFAULT_BUCKET, 1.0) == 0 and not any(weights.values()):
        raise ValueError(
            f"every weight is 0 ({dict(weights)}): nothing would be left to train on"
        )
    return {key: float(weight) for key, weight in weights.items()}


def weighted_copies(doc_id: str, weight: float, seed: int) -> int:
    """How many times a document of weight `weight` enters the mix: floor(weight), plus one
    with probability frac(weight), drawn from a seeded hash of its id."""
    return document_copies(doc_id, weight, seed, purpose=b"lmforge/mix")


@dataclass(frozen=True)
class MixingWeights:
    """Weights per source and per language (None: all 1.0) and the seed of the draws."""

    sources: Mapping[str, float] | None = None
    languages: Mapping[str, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_weights(self.sources)
        check_weights(self.languages)
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"mixing seed must be in 0..2**64-1, got {self.seed}")

    @property
    def is_uniform(self) -> bool:
        """Every document weighs 1.0: each enters exactly once."""
        return all(
            weight == 1.0
            for mapping in (self.sources, self.languages)
            for weight in (mapping or {}).values()
        )

    def source_bucket(self, source: str | None) -> str:
        """The bucket a source is counted in: its own when the weights name it, else `*`.
        Only named sources are tallied one by one; a web crawl has too many hosts to list."""
        return source if source and self.sources and source in self.sources else DEFAULT_BUCKET

    def weight(self, source: str | None, lang: str) -> float:
        """A document's weight: its source's weight x its language's weight."""
        return _weight_of(self.sources, self.source_bucket(source)) * _weight_of(
            self.languages, lang
        )

    def copies(self, doc_id: str, source: str | None, lang: str) -> int:
        """How many times the document enters the train split (0 drops it)."""
        return weighted_copies(doc_id, self.weight(source, lang), self.seed)


def _weight_of(weights: Mapping[str, float] | None, key: str) -> float:
    if not weights:
        return 1.0
    return weights.get(key, weights.get(DEFAULT_BUCKET, 1.0))


@dataclass
class MixTally:
    """Documents, tokens and UTF-8 bytes per language and per source bucket, before and after
    weighting (see TALLY_FIELDS)."""

    by_language: dict[str, np.ndarray] = field(default_factory=dict)
    by_source: dict[str, np.ndarray] = field(default_factory=dict)

    def add(
        self,
        langs: Sequence[str],
        source_buckets: Sequence[str],
        lengths: np.ndarray,
        text_bytes: np.ndarray,
        copies: np.ndarray,
    ) -> None:
        """Count documents with `lengths[i]` tokens and `text_bytes[i]` bytes entering
        `copies[i]` times, in language `langs[i]` and source bucket `source_buckets[i]`."""
        lengths, text_bytes, copies = (
            np.asarray(a, dtype=np.int64) for a in (lengths, text_bytes, copies)
        )
        counts = np.stack(
            [np.ones_like(lengths), lengths, text_bytes, copies, lengths * copies,
             text_bytes * copies],
            axis=1,
        )  # fmt: skip
        _add_grouped(self.by_language, langs, counts)
        _add_grouped(self.by_source, source_buckets, counts)

    def total(self, name: str) -> int:
        """One of TALLY_FIELDS summed over every document."""
        column = TALLY_FIELDS.index(name)
        return int(sum(int(counts[column]) for counts in self.by_language.values()))

    def after_by_language(self, name: str) -> dict[str, int]:
        """`documents`, `tokens` or `bytes` after weighting per language, for the languages
        that kept a document."""
        column, kept = TALLY_FIELDS.index(f"{name}_after"), TALLY_FIELDS.index("documents_after")
        return {
            lang: int(counts[column])
            for lang, counts in sorted(self.by_language.items())
            if counts[kept]
        }

    def summary(self, weights: MixingWeights, weighted: bool) -> dict[str, Any]:
        """The manifest entry: per language and per source bucket, the bucket's weight (1.0 in
        a split that is not `weighted`) and its TALLY_FIELDS. Buckets the weights name appear
        even when no document fell in them, so that a misspelt name shows."""
        languages, sources = weights.languages or {}, weights.sources or {}
        return {
            "weighted": weighted,
            "by_language": _bucket_entries(
                self.by_language, languages if weighted else {}, set(languages) - {DEFAULT_BUCKET}
            ),
            "by_source": _bucket_entries(self.by_source, sources if weighted else {}, set(sources)),
        }


def _add_grouped(table: dict[str, np.ndarray], keys: Sequence[str], counts: np.ndarray) -> None:
    index: dict[str, int] = {}
    codes = np.fromiter(
        (index.setdefault(key, len(index)) for key in keys), dtype=np.intp, count=len(keys)
    )
    sums = np.zeros((len(index), counts.shape[1]), dtype=np.int64)
    np.add.at(sums, codes, counts)
    for key, code in index.items():
        table[key] = table[key] + sums[code] if key in table else sums[code]


def _bucket_entries(
    table: Mapping[str, np.ndarray], weights: Mapping[str, float], named: set[str]
) -> dict[str, dict[str, float | int]]:
    empty = np.zeros(len(TALLY_FIELDS), dtype=np.int64)
    return {
        key: {
            "weight": _weight_of(weights, key),
            **dict(zip(TALLY_FIELDS, table.get(key, empty).tolist(), strict=True)),
        }
        for key in sorted(set(table) | named)
    }
