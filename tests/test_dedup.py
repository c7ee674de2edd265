"""Exact and near-duplicate detection: copies go, pages that merely share a template stay."""

from __future__ import annotations


import numpy as np
from datasketch import MinHash
import pytest
from data_stage_fixtures import ARTICLE_JA, ARTICLES_EN, paragraphs_text
from lmforge.tasks.data import dedup
from lmforge.tasks.data.dedup import (
    DedupDocument,
    MinHashConfig,
    MinHasher,
    find_duplicates,
    jaccard,
    shingle_hashes,
    shingles,
)

CONFIG = MinHashConfig()
LONG_DOC = ARTICLES_EN["backups"] + ARTICLES_EN["packages"]  # eight paragraphs


def near_copy(paragraphs: list[str]) -> str:
    """A mirror's version: one paragraph dropped and two words changed."""
    kept = paragraphs[:3] + paragraphs[4:]
    kept[0] = kept[0].replace("backup", "copy", 1)
    kept[-1] = kept[-1].replace("vendor", "company", 1)
    return paragraphs_text(kept)


def similarity(a: str, b: str, lang: str = "en") -> float:
    return jaccard(shingles(a, lang, CONFIG), shingles(b, lang, CONFIG))


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The share of equal signature values: MinHash's unbiased estimate of the Jaccard."""
    return float(np.mean(a == b))


def test_exact_copies_are_removed_in_favour_of_the_first_seen():
    text = paragraphs_text(ARTICLES_EN["time"])
    docs = [
        DedupDocument("b", text),
        DedupDocument("a", text),
        DedupDocument("c", text.upper().replace("\n\n", "\n  \n")),  # case and spacing differ
        DedupDocument("other", paragraphs_text(ARTICLES_EN["printing"])),
    ]
    report = find_duplicates(docs)

    removed = {d.id: (d.duplicate_of, d.reason) for d in report.duplicates}
    assert removed == {"a": ("b", "exact_duplicate"), "c": ("b", "exact_duplicate")}
    assert report.stats["exact_duplicates"] == 2 and report.stats["near_duplicates"] == 0
    assert report.kept.ids == ["b", "other"]


def test_near_copies_are_removed_with_the_survivors_id():
    original = paragraphs_text(LONG_DOC)
    mirror = near_copy(LONG_DOC)
    assert 0.8 <= similarity(original, mirror) < 1.0

    report = find_duplicates([DedupDocument("mirror", mirror), DedupDocument("orig", original)])

    assert [(d.id, d.duplicate_of, d.reason) for d in report.duplicates] == [
        ("orig", "mirror", "near_duplicate")  # the first seen survives, even if shorter
    ]


def test_pages_sharing_a_template_are_not_removed():
    template = ARTICLES_EN["printing"] + ARTICLES_EN["time"]
    pages = [
        DedupDocument(name, paragraphs_text(template + ARTICLES_EN[name]))
        for name in ("backups", "packages")
    ]
    assert 0.4 < similarity(pages[0].text, pages[1].text) < 0.8

    assert find_duplicates(pages).duplicates == []


def test_lsh_candidates_below_the_threshold_are_rejected_by_exact_jaccard():
    # A very permissive LSH (56 bands of 2 rows) makes the template pair a sure candidate.
    permissive = MinHashConfig(num_perm=112, bands=56, rows=2)
    template = ARTICLES_EN["printing"] + ARTICLES_EN["backups"] + ARTICLES_EN["time"][:2]
    own = {"first": ARTICLES_EN["packages"][:2], "second": ARTICLES_EN["packages"][2:]}
    pages = [DedupDocument(name, paragraphs_text(template + part)) for name, part in own.items()]
    assert 0.6 < similarity(pages[0].text, pages[1].text) < 0.8

    report = find_duplicates(pages, permissive)

    assert report.stats["candidate_pairs"] == 1 and report.stats["verified_pairs"] == 0
    assert report.duplicates == []


def window(start: int, words: int = 100) -> str:
    return " ".join(f"token{i}" for i in range(start, start + words))


def test_a_file_is_deduplicated_against_documents_kept_in_earlier_files_only():
    # A chain: each text shifted by 6 words from the one before (Jaccard 0.88); ends at 0.78.
    texts = [window(0), window(6), window(12)]
    assert similarity(texts[0], texts[2]) < 0.8 <= similarity(texts[1], texts[2])
    in_one_file = [DedupDocument(str(n), t, source="a") for n, t in enumerate(texts)]
    assert {d.id: d.duplicate_of for d in find_duplicates(in_one_file).duplicates} == {
        "1": "0", "2": "0",
    }  # fmt: skip
    # The last text comes in a later file: it meets only what file "a" kept ("0"), not the
    # chain through "1", which file "a" removed.
    split = [*in_one_file[:2], DedupDocument("2", texts[2], source="b")]
    assert {d.id for d in find_duplicates(split).duplicates} == {"1"}


def test_a_huge_band_bucket_pairs_neighbours_only_and_still_joins_the_copies(monkeypatch):
    monkeypatch.setattr(dedup, "BUCKET_WINDOW", 1)
    texts = [window(0), window(1), window(2), window(3)]  # each 0.9+ to the next
    report = find_duplicates([DedupDocument(str(n), t) for n, t in enumerate(texts)])
    assert report.stats["candidate_pairs"] == 3  # (0,1), (1,2), (2,3): not all 6 pairs
    assert {d.id: d.duplicate_of for d in report.duplicates} == {"1": "0", "2": "0", "3": "0"}


def test_result_is_the_same_for_any_order_of_files_finishing():
    texts = [paragraphs_text(LONG_DOC), near_copy(LONG_DOC), paragraphs_text(LONG_DOC),
             paragraphs_text(ARTICLES_EN["time"])]  # fmt: skip
    docs = [DedupDocument(f"doc-{n}", t, source=f"f{n % 2}") for n, t in enumerate(texts)]
    first = find_duplicates(docs).duplicates
    assert find_duplicates(list(docs)).duplicates == first
    assert {d.duplicate_of for d in first} == {"doc-0"}


def test_copies_join_one_cluster_transitively():
    base = LONG_DOC
    step1 = base[:7] + [base[7].replace("trust", "faith")]
    step2 = step1[:6] + [step1[6].replace("signing key", "key"), step1[7]]
    docs = [DedupDocument(str(n), paragraphs_text(p)) for n, p in enumerate([base, step1, step2])]
    report = find_duplicates(docs)
    assert report.stats["clusters"] == 1
    assert {d.id for d in report.duplicates} | {report.duplicates[0].duplicate_of} == {
        "0",
        "1",
        "2",
    }


def test_japanese_is_shingled_by_characters_ignoring_spacing():
    text = paragraphs_text(ARTICLE_JA)
    spaced = " ".join(text)  # groff renders Japanese man pages with a space between characters
    assert similarity(text, spaced, "ja") == 1.0
    edited = text.replace("願い", "望み")
    report = find_duplicates([DedupDocument("a", text, "ja"), DedupDocument("b", edited, "ja")])
    assert [(d.id, d.reason) for d in report.duplicates] == [("b", "near_duplicate")]


def test_signatures_estimate_jaccard_and_ignore_repeated_shingles():
    text, mirror = paragraphs_text(LONG_DOC), near_copy(LONG_DOC)
    hasher = MinHasher(CONFIG)
    a = hasher.signature(shingle_hashes(text, "en", CONFIG))
    b = hasher.signature(shingle_hashes(mirror, "en", CONFIG))
    assert abs(estimated_jaccard(a, b) - similarity(text, mirror)) < 0.12
    assert np.array_equal(a, hasher.signature(shingles(text, "en", CONFIG)))
    assert np.array_equal(hasher.bands(a), MinHasher(CONFIG).bands(a))
    assert hasher.bands(a).shape == (CONFIG.bands,)


def test_signatures_of_huge_documents_computed_in_chunks_equal_datasketch_minhash():
    hashes = np.random.default_rng(0).integers(0, 2**63, 50_000, dtype=np.int64).astype(np.uint64)
    reference = MinHash(num_perm=CONFIG.num_perm, seed=CONFIG.seed, scheme="affine64",
                        hashfunc=int)  # fmt: skip
    reference.update_batch(hashes.tolist())  # all 50k at once, no chunks
    assert np.array_equal(MinHasher(CONFIG).signature(hashes), reference.hashvalues)


def test_signature_estimates_are_unbiased_over_many_pairs():
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(30):
        universe = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64)
        a, b = universe[:300], universe[100:]  # true Jaccard 200 / 400 = 0.5
        hasher = MinHasher(CONFIG)
        errors.append(estimated_jaccard(hasher.signature(a), hasher.signature(b)) - 0.5)
    assert abs(np.mean(errors)) < 0.03


def test_repeated_ids_are_refused():
    with pytest.raises(ValueError, match="'x' occurs twice"):
        find_duplicates([DedupDocument("x", "one text"), DedupDocument("x", "another")])


def test_minhash_config_checks_bands_times_rows():
    with pytest.raises(ValueError, match="14 x 7"):
        MinHashConfig(bands=14, rows=7)
    with pytest.raises(ValueError, match="threshold"):
        MinHashConfig(threshold=1.5)
