"""Exact and near-duplicate detection: copies go, pages that merely share a template stay."""

from __future__ import annotations

import random

import numpy as np
import pytest
from data_stage_fixtures import ARTICLE_JA, ARTICLES_EN, paragraphs_text
from lmforge.tasks.dedup import (
    DedupDocument,
    MinHashConfig,
    MinHasher,
    find_duplicates,
    jaccard,
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


def test_exact_copies_are_removed_in_favour_of_one_survivor():
    text = paragraphs_text(ARTICLES_EN["time"])
    docs = [
        DedupDocument("b", text),
        DedupDocument("a", text),
        DedupDocument("c", text.upper().replace("\n\n", "\n  \n")),  # case and spacing differ
        DedupDocument("other", paragraphs_text(ARTICLES_EN["printing"])),
    ]
    report = find_duplicates(docs)

    survivor = "a" if len(text) >= len(docs[2].text) else "c"
    removed = {d.id: (d.duplicate_of, d.reason) for d in report.duplicates}
    assert removed == {i: (survivor, "exact_duplicate") for i in ("a", "b", "c") if i != survivor}
    assert report.stats["exact_duplicates"] == 2 and report.stats["near_duplicates"] == 0


def test_near_copies_are_removed_with_the_survivors_id():
    original = paragraphs_text(LONG_DOC)
    mirror = near_copy(LONG_DOC)
    assert 0.8 <= similarity(original, mirror) < 1.0

    report = find_duplicates([DedupDocument("mirror", mirror), DedupDocument("orig", original)])

    assert [(d.id, d.duplicate_of, d.reason) for d in report.duplicates] == [
        ("mirror", "orig", "near_duplicate")  # the longer text survives
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


def test_survivor_is_the_longest_text_and_ties_go_to_the_smallest_id():
    original = paragraphs_text(LONG_DOC)
    docs = [DedupDocument("z-long", original + " Extra closing sentence."),
            DedupDocument("y", original), DedupDocument("x", original)]  # fmt: skip
    assert {d.duplicate_of for d in find_duplicates(docs).duplicates} == {"z-long"}
    tie = [DedupDocument("y", original), DedupDocument("x", original)]
    assert find_duplicates(tie).duplicates[0].duplicate_of == "x"


def test_result_does_not_depend_on_input_order():
    texts = [
        paragraphs_text(LONG_DOC),
        near_copy(LONG_DOC),
        paragraphs_text(LONG_DOC),
        paragraphs_text(ARTICLES_EN["time"]),
        paragraphs_text(ARTICLES_EN["printing"]),
    ]
    docs = [DedupDocument(f"doc-{n}", text) for n, text in enumerate(texts)]  # fmt: skip
    expected = find_duplicates(docs).duplicates
    for seed in range(3):
        shuffled = docs[:]
        random.Random(seed).shuffle(shuffled)
        assert find_duplicates(shuffled).duplicates == expected


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


def test_signatures_estimate_jaccard():
    a = shingles(paragraphs_text(LONG_DOC), "en", CONFIG)
    b = shingles(near_copy(LONG_DOC), "en", CONFIG)
    hasher = MinHasher(CONFIG)
    estimate = hasher.signature(a).jaccard(hasher.signature(b))
    assert abs(estimate - jaccard(a, b)) < 0.12
    assert np.array_equal(hasher.signature(a).hashvalues, hasher.signature(a).hashvalues)


def test_repeated_ids_are_refused():
    with pytest.raises(ValueError, match="'x' occurs twice"):
        find_duplicates([DedupDocument("x", "one text"), DedupDocument("x", "another")])


def test_minhash_config_checks_bands_times_rows():
    with pytest.raises(ValueError, match="14 x 7"):
        MinHashConfig(bands=14, rows=7)
    with pytest.raises(ValueError, match="threshold"):
        MinHashConfig(threshold=1.5)
