"""Benchmark decontamination: pages carrying a benchmark item's n-gram are found, with the item
named; pages that only come close are not; saved indexes match exactly as built ones."""

from __future__ import annotations

import json
import pickle
import random
import re

import numpy as np
import pytest
from data_stage_fixtures import ARTICLE_JA, ARTICLE_ZH, ARTICLES_EN, paragraphs_text
from lmforge.tasks.data.decontamination import (
    BenchmarkText,
    Contamination,
    DecontaminationError,
    NgramIndex,
    load_benchmark_texts,
)
from lmforge.tasks.data.ngrams import tokenize

# A benchmark passage (LAMBADA-like) of 31 words, and one BLiMP-like pair per length class.
PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening, counting the steps aloud "
    "so that his daughter would learn the numbers before the winter storms closed the harbour."
)
PLANTED_WORDS = PASSAGE.split()[8:21]  # 13 words from its middle
PAGE = paragraphs_text(ARTICLES_EN["backups"])
SENTENCE_9 = "Those seven teachers had praised every student before lunch."
SENTENCE_5 = "The dogs barked loudly today."
ZH_ITEM = "在硬盘悄无声息地损坏之前这种做法一直有效"  # from ARTICLE_ZH, without punctuation
JA_ITEM = "事務所の外に二つ目のコピーを置けば"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def plant(page: str, planted: str) -> str:
    """`planted` inserted in the middle of the page's second paragraph."""
    paragraphs = page.split("\n\n")
    words = paragraphs[1].split(" ")
    middle = len(words) // 2
    paragraphs[1] = " ".join(words[:middle] + [planted] + words[middle:])
    return "\n\n".join(paragraphs)


@pytest.fixture(scope="module")
def index() -> NgramIndex:
    return NgramIndex.build(
        [
            BenchmarkText("lambada", "line 7", PASSAGE),
            BenchmarkText("blimp/quantifiers", "12", SENTENCE_9),
            BenchmarkText("blimp/quantifiers", "13", SENTENCE_5),
            BenchmarkText("zh_quiz", "q1", ZH_ITEM),
            BenchmarkText("ja_quiz", "q2", JA_ITEM),
        ]
    )


def test_planted_ngram_is_found_despite_case_and_punctuation(index):
    planted = "“" + " ".join(PLANTED_WORDS).upper().replace(" ", ", ", 3) + "!”"
    page = plant(PAGE, planted)

    found = index.matches(page)

    assert len(found) == 1
    match = found[0]
    assert (match.benchmark, match.item) == ("lambada", "line 7")
    assert page[match.start : match.end] == planted[1:-2]  # first word to last, quotes outside
    assert index.first_match(page) == match


def test_longer_overlap_is_one_span_per_item(index):
    page = plant(PAGE, PASSAGE)

    found = index.matches(page)

    start = page.index(PASSAGE)
    assert found == [Contamination("lambada", "line 7", start, start + len(PASSAGE) - 1)]


def test_every_item_in_a_page_is_reported_in_page_order(index):
    page = f"{PAGE}\n\n{SENTENCE_9}\n\n{PASSAGE}\n\n{PAGE}"

    found = index.matches(page)

    assert [(m.benchmark, m.item) for m in found] == [
        ("blimp/quantifiers", "12"), ("lambada", "line 7"),
    ]  # fmt: skip
    assert index.first_match(page) == found[0]


@pytest.mark.parametrize(
    "planted",
    [
        " ".join(PLANTED_WORDS[:12]),  # 12 of the 13 words
        " ".join(PLANTED_WORDS[:6] + ["quietly"] + PLANTED_WORDS[6:12]),  # a word in between
        " ".join(reversed(PLANTED_WORDS)),
        " ".join(random.Random(0).sample(PLANTED_WORDS, 13)),
        "Those seven teachers had praised every student",  # 7 of the 9-word item
    ],
)
def test_pages_that_only_come_close_are_clean(index, planted):
    page = plant(PAGE, planted)
    assert index.matches(page) == []
    assert index.first_match(page) is None


@pytest.mark.parametrize("article", [ARTICLES_EN[name] for name in ARTICLES_EN])
def test_unrelated_articles_are_clean(index, article):
    assert index.matches(paragraphs_text(article)) == []


def test_cjk_text_is_matched_by_characters(index):
    zh_page = paragraphs_text(ARTICLE_ZH)  # holds ZH_ITEM with a comma inside
    ja_page = paragraphs_text(ARTICLE_JA)

    zh_found = index.matches(zh_page)
    ja_found = index.matches(ja_page)

    assert [(m.benchmark, m.item) for m in zh_found] == [("zh_quiz", "q1")]
    assert zh_page[zh_found[0].start : zh_found[0].end] == "在硬盘悄无声息地损坏之前，这种做法一直有效"
    assert [(m.benchmark, m.item) for m in ja_found] == [("ja_quiz", "q2")]
    assert index.matches(ZH_ITEM[:12] + "。") == []  # 12 characters: under the 13-gram


def test_cjk_characters_are_tokens_and_words_are_folded():
    text = "Straße, ＡＢＣ abc! 東京は"
    tokens = tokenize(text)
    assert [text[a:b] for a, b in zip(tokens.starts, tokens.ends)] == [
        "Straße", "ＡＢＣ", "abc", "東", "京", "は",
    ]  # fmt: skip
    assert tokens.hashes[1] == tokens.hashes[2]  # full-width and case folded
    assert len(set(tokens.hashes.tolist())) == 5


def test_short_items_match_whole_or_are_skipped_and_counted(index):
    page = plant(PAGE, SENTENCE_9.lower().rstrip("."))

    assert [(m.benchmark, m.item) for m in index.matches(page)] == [("blimp/quantifiers", "12")]
    assert index.matches(plant(PAGE, SENTENCE_5)) == []
    counts = index.stats()["benchmarks"]["blimp/quantifiers"]
    assert counts == {"items": 2, "texts": 2, "skipped_short": 1, "grams": 1}
    assert index.stats()["gram_lengths"] == [9, 13]

    lenient = NgramIndex.build([BenchmarkText("blimp/quantifiers", "13", SENTENCE_5)], 13, 5)
    assert [m.item for m in lenient.matches(plant(PAGE, SENTENCE_5))] == ["13"]


def test_n_is_configurable():
    index = NgramIndex.build([BenchmarkText("lambada", "1", PASSAGE)], n=8, min_item_tokens=8)
    assert len(index.matches(plant(PAGE, " ".join(PLANTED_WORDS[:8])))) == 1
    assert index.matches(plant(PAGE, " ".join(PLANTED_WORDS[:7]))) == []


def test_cut_removes_only_the_matched_spans(index):
    planted = "(" + " ".join(PLANTED_WORDS) + ")."
    page = plant(PAGE, planted)

    cut = index.cut(page, index.matches(page))

    paragraphs = PAGE.split("\n\n")
    words = paragraphs[1].split(" ")
    middle = len(words) // 2
    paragraphs[1] = " ".join(words[:middle] + words[middle:])
    assert cut == "\n\n".join(paragraphs)
    assert index.cut(PAGE, []) == PAGE


def test_cut_merges_overlaps_and_keeps_paragraph_breaks(index):
    page = f"First paragraph stays.\n\n{PASSAGE}\n\nLast paragraph stays too."
    found = index.matches(page)
    overlapping = [*found, Contamination("x", "y", found[0].start + 5, found[0].end + 3)]

    assert index.cut(page, overlapping) == "First paragraph stays.\n\nLast paragraph stays too."
    assert index.cut(PASSAGE, index.matches(PASSAGE)) == ""


def test_saved_index_is_memory_mapped_and_matches_the_same(index, tmp_path):
    index.save(tmp_path / "index")
    loaded = NgramIndex.load(tmp_path / "index")
    pages = [plant(PAGE, " ".join(PLANTED_WORDS)), plant(PAGE, SENTENCE_9), PAGE,
             paragraphs_text(ARTICLE_ZH)]  # fmt: skip

    assert isinstance(loaded._grams.base, np.memmap)
    assert [loaded.matches(p) for p in pages] == [index.matches(p) for p in pages]
    assert loaded.fingerprint() == index.fingerprint()
    assert loaded.stats() == index.stats()

    shipped = pickle.dumps(loaded)
    assert len(shipped) < 1000  # the folder, not the arrays
    assert pickle.loads(shipped).matches(pages[0]) == index.matches(pages[0])
    assert pickle.loads(pickle.dumps(index)).matches(pages[1]) == index.matches(pages[1])


def test_fingerprint_follows_content_and_settings():
    texts = [BenchmarkText("lambada", "1", PASSAGE)]
    same = NgramIndex.build(texts).fingerprint()
    assert NgramIndex.build(texts).fingerprint() == same
    assert NgramIndex.build(texts, n=12).fingerprint() != same
    assert NgramIndex.build([BenchmarkText("lambada", "2", PASSAGE)]).fingerprint() != same


def test_bad_settings_are_refused():
    texts = [BenchmarkText("lambada", "1", PASSAGE)]
    with pytest.raises(DecontaminationError, match="min_item_tokens 14"):
        NgramIndex.build(texts, n=13, min_item_tokens=14)
    with pytest.raises(DecontaminationError, match="n-gram size 0"):
        NgramIndex.build(texts, n=0)
    with pytest.raises(DecontaminationError, match="no benchmark items"):
        NgramIndex.build([])


# --- Benchmark files ---------------------------------------------------------------------------

HELLASWAG = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes.",
             "ctx_b": "then", "endings": ["a", "b", "c", "d"], "label": 1}  # fmt: skip
ARC_CHOICES = [{"label": "A", "text": "oxygen"}, {"label": "B", "text": "carbon dioxide"}]
ARC = {"id": "Mercury_1", "answerKey": "B",
       "question": {"stem": "Which gas do plants absorb?", "choices": ARC_CHOICES}}  # fmt: skip


def test_benchmark_formats_are_recognised_with_their_item_ids(tmp_path):
    (tmp_path / "blimp").mkdir()
    pair = {"sentence_good": "Who did Al see?", "sentence_bad": "Who did Al saw?", "pairID": "0"}
    write_jsonl(tmp_path / "blimp" / "adjunct_island.jsonl", [pair])
    write_jsonl(tmp_path / "hellaswag_val.jsonl", [HELLASWAG])
    write_jsonl(tmp_path / "ARC-Challenge-Test.jsonl", [ARC])
    write_jsonl(tmp_path / "valid.jsonl", [{"goal": "Open a jar", "sol1": "twist", "sol2": "bite"}])
    (tmp_path / "valid-labels.lst").write_text("0\n")
    write_jsonl(tmp_path / "lambada_test.jsonl", [{"text": "He opened the door"}])
    write_jsonl(tmp_path / "my_eval.json", [{"text": "first"}, {"id": 9, "text": "second"}])

    texts = load_benchmark_texts([tmp_path])

    by_item = {}
    for text in texts:
        by_item.setdefault((text.benchmark, text.item), []).append(text.text)
    assert by_item == {
        ("blimp/adjunct_island", "0"): ["Who did Al see?", "Who did Al saw?"],
        ("arc_challenge", "Mercury_1"): [
            "Which gas do plants absorb?",
            "Which gas do plants absorb? oxygen",
            "Which gas do plants absorb? carbon dioxide",
        ],
        ("hellaswag", "4"): [
            "Removing ice from car: Then, the man writes. Then",
            *(f"Removing ice from car: Then, the man writes. Then {e}" for e in "abcd"),
        ],
        ("lambada", "line 1"): ["He opened the", "He opened the door"],
        ("my_eval", "line 1"): ["first"],
        ("my_eval", "9"): ["second"],
        ("piqa", "line 1"): ["Open a jar", "Open a jar twist", "Open a jar bite"],
    }


def test_two_files_of_one_benchmark_keep_apart(tmp_path):
    write_jsonl(tmp_path / "hellaswag_train.jsonl", [HELLASWAG])
    write_jsonl(tmp_path / "hellaswag_val.jsonl", [HELLASWAG])

    names = {text.benchmark for text in load_benchmark_texts([tmp_path])}

    assert names == {"hellaswag/hellaswag_train", "hellaswag/hellaswag_val"}


MALFORMED = {
    "blimp_missing_bad.jsonl": '{"sentence_good": "A b c.", "sentence_bad": ""}\n',
    "hellaswag_without_label.jsonl": json.dumps({**HELLASWAG, "label": None}) + "\n",
    "texts_bad_json.jsonl": '{"text": "fine"}\n{"text": broken\n',
    "texts_missing_field.jsonl": '{"text": "fine"}\n{"title": "no text"}\n',
    "unknown_format.jsonl": '{"prompt": "a", "completion": "b"}\n',
    "empty.jsonl": "\n\n",
    "not_utf8.jsonl": '{"text": "caf\xe9"}\n',
    "piqa_without_labels.jsonl": '{"goal": "g", "sol1": "a", "sol2": "b"}\n',
}


@pytest.mark.parametrize("name", MALFORMED)
def test_unusable_benchmark_file_is_refused_naming_it(tmp_path, name):
    path = tmp_path / name
    encoding = "latin-1" if name == "not_utf8.jsonl" else "utf-8"
    path.write_text(MALFORMED[name], encoding=encoding)

    with pytest.raises(DecontaminationError, match=re.escape(str(path))):
        NgramIndex.from_paths([tmp_path])


def test_missing_path_and_folder_without_files_are_refused(tmp_path):
    with pytest.raises(DecontaminationError, match=re.escape(str(tmp_path / "nope"))):
        load_benchmark_texts([tmp_path / "nope"])
    (tmp_path / "notes.txt").write_text("not a benchmark")
    with pytest.raises(DecontaminationError, match=f"{re.escape(str(tmp_path))} holds no"):
        load_benchmark_texts([tmp_path])


def test_real_blimp_sentence_planted_in_a_page_is_found(shared_dir):
    blimp = shared_dir / "benchmarks" / "blimp"
    if not blimp.is_dir():
        pytest.skip(f"{blimp} is not present")
    index = NgramIndex.from_paths([blimp])
    texts = load_benchmark_texts([blimp / "adjunct_island.jsonl"])
    sentence = next(t for t in texts if len(t.text.split()) >= 10)

    found = index.matches(plant(PAGE, sentence.text))

    assert (found[0].benchmark, found[0].item) == (sentence.benchmark, sentence.item)
    assert index.stats()["items"] == 1000 * len(list(blimp.glob("*.jsonl")))
    for article in ARTICLES_EN.values():
        assert index.matches(paragraphs_text(article)) == []
