"""Quality filters: each rule drops what it is meant to drop, and real prose in any script stays."""

from __future__ import annotations

import random

import pytest
from data_stage_fixtures import (
    ARTICLE_DE,
    ARTICLE_JA,
    ARTICLE_RU,
    ARTICLE_ZH,
    ARTICLES_EN,
    BULLET_SPAM,
    KEYWORD_STUFFING,
    REPEATED_LINES,
    SYMBOL_SOUP,
    paragraphs_text,
)
from lmforge.tasks.data.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    PIIFormatter,
    first_rejection,
)
from lmforge.tasks.data.filters.c4 import count_sentences
from lmforge.tasks.data.filters.gopher import duplicate_ngram_char_count, top_ngram_char_count
from lmforge.tasks.data.filters.text_units import TextUnits

ALL_FILTERS = (GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
               FineWebQualityFilter())  # fmt: skip
GOOD_EN = paragraphs_text(ARTICLES_EN["backups"])
# A doc page with a code listing: braces, short lines and lines without final punctuation.
DOC_WITH_CODE = paragraphs_text(
    ARTICLES_EN["time"][:3]
    + [
        "The following C fragment reads the clock and prints it:",
        "#include <time.h>\nint main(void) {\n    time_t now = time(NULL);\n"
        '    printf("%ld\\n", (long) now);\n    return 0;\n}',
        ARTICLES_EN["time"][3],
    ]
)


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        (GOOD_EN, "en"),
        (DOC_WITH_CODE, "en"),
        (paragraphs_text(ARTICLE_DE), "de"),
        (paragraphs_text(ARTICLE_RU), "ru"),
        (paragraphs_text(ARTICLE_JA), "ja"),
        (paragraphs_text(ARTICLE_ZH), "zh"),
    ],
    ids=["english", "english-with-code", "german", "russian", "japanese", "chinese"],
)
def test_real_prose_passes_every_filter_in_any_script(text, lang):
    assert first_rejection(ALL_FILTERS, text, lang) is None


@pytest.mark.parametrize(
    ("junk", "expected"),
    [
        (KEYWORD_STUFFING, "gopher_quality:stop_words"),
        ("Too short to be a document.", "gopher_quality:too_few_words"),
        (SYMBOL_SOUP, "gopher_quality:alpha_words"),
        (BULLET_SPAM, "gopher_quality:bullet_lines"),
    ],
)
def test_gopher_quality_filter_drops_junk(junk, expected):
    assert GopherQualityFilter().reject_reason(junk, "en") == expected


def test_gopher_filter_drops_keyword_stuffing():
    assert (
        GopherQualityFilter().reject_reason(KEYWORD_STUFFING, "en") == "gopher_quality:stop_words"
    )


def test_gopher_stop_words_are_case_insensitive_and_only_required_of_english():
    shouting = GOOD_EN.upper()
    assert GopherQualityFilter().reject_reason(shouting, "en") is None
    assert GopherQualityFilter().reject_reason(paragraphs_text(ARTICLE_DE), "de") is None
    assert (
        GopherQualityFilter(stop_word_languages=("de",)).reject_reason(
            paragraphs_text(ARTICLE_DE), "de"
        )
        == "gopher_quality:stop_words"
    )


def test_gopher_words_are_whitespace_tokens_so_punctuation_does_not_shorten_them():
    units = TextUnits("Hello, world! (see below) -- done.")
    assert [units.unit(i) for i in range(len(units))] == [
        "Hello,", "world!", "(see", "below)", "--", "done.",
    ]  # fmt: skip


def test_characters_are_words_in_scripts_written_without_spaces():
    units = TextUnits("日本語の文 and English")
    assert [units.unit(i) for i in range(len(units))] == ["日", "本", "語", "の", "文", "and",
                                                          "English"]  # fmt: skip
    assert TextUnits(paragraphs_text(ARTICLE_JA)).dense
    assert not TextUnits(GOOD_EN).dense


def test_gopher_quality_rules_on_symbols_ellipses_and_word_length():
    words = GOOD_EN.split()
    hashes = " ".join(f"#{w}" for w in words)
    assert GopherQualityFilter().reject_reason(hashes, "en") == "gopher_quality:hash_ratio"
    ellipses = "\n".join(" ".join(words[i : i + 6]) + " ..." for i in range(0, len(words), 6))
    assert (
        GopherQualityFilter(max_ellipsis_word_ratio=None).reject_reason(ellipses, "en")
        == "gopher_quality:ellipsis_lines"
    )
    long_words = " ".join(["internationalisation-compatibility"] * 60)
    assert (
        GopherQualityFilter().reject_reason(long_words, "en") == "gopher_quality:mean_word_length"
    )


def test_word_length_rules_are_skipped_for_dense_scripts():
    # 60 one-character words would fail the 3-character minimum if the rule applied.
    assert (
        GopherQualityFilter(min_words=10).reject_reason(paragraphs_text(ARTICLE_ZH), "zh") is None
    )


def test_a_rule_set_to_none_is_off():
    assert GopherQualityFilter(min_words=None).reject_reason("Short but fine.", "xx") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (REPEATED_LINES, "gopher_repetition:duplicate_lines"),
        (GOOD_EN + "\n\n" + " ".join(["Buy now, buy now"] * 80), "gopher_repetition:top_2_gram"),
    ],  # fmt: skip
)
def test_gopher_repetition_filter_drops_repetitive_text(text, expected):
    assert GopherRepetitionFilter().reject_reason(text, "en") == expected


def test_gopher_repetition_catches_repeated_paragraphs():
    paragraph = "\n".join(ARTICLES_EN["time"][:2])
    text = paragraphs_text([paragraph] * 3 + ARTICLES_EN["time"][2:])
    only_paragraph_rules = GopherRepetitionFilter(
        max_duplicate_line_fraction=None, max_duplicate_line_char_fraction=None
    )
    assert (
        only_paragraph_rules.reject_reason(text, "en") == "gopher_repetition:duplicate_paragraphs"
    )


def test_gopher_repetition_catches_a_repeated_passage_inside_one_paragraph():
    passage = ARTICLES_EN["packages"][1]
    text = paragraphs_text(ARTICLES_EN["packages"][:1] + [passage + " " + passage])
    reason = GopherRepetitionFilter(
        max_duplicate_paragraph_fraction=None,
        max_duplicate_paragraph_char_fraction=None,
        max_duplicate_line_fraction=None,
        max_duplicate_line_char_fraction=None,
    ).reject_reason(text, "en")
    assert reason == "gopher_repetition:duplicate_5_grams"


def naive_duplicate_ngram_chars(words: list[str], n: int) -> int:
    seen, covered = set(), set()
    for i in range(len(words) - n + 1):
        gram = tuple(w.lower() for w in words[i : i + n])
        if gram in seen:
            covered.update(range(i, i + n))
        seen.add(gram)
    return sum(len(words[i]) for i in covered)


def naive_top_ngram_chars(words: list[str], n: int) -> int:
    counts: dict[tuple, list[int]] = {}
    for i in range(len(words) - n + 1):
        counts.setdefault(tuple(w.lower() for w in words[i : i + n]), []).append(i)
    most = max(map(len, counts.values()), default=0)
    if most < 2:
        return 0
    # Ties: the longest of the most frequent n-grams.
    return most * max(
        sum(len(w) for w in words[at[0] : at[0] + n]) for at in counts.values() if len(at) == most
    )


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_ngram_counts_match_a_plain_python_reference(seed):
    rng = random.Random(seed)
    vocabulary = ["alpha", "Beta", "gamma", "delta", "eps", "zeta", "ETA", "theta"]
    words = [rng.choice(vocabulary[: 3 + seed]) for _ in range(300)]
    units = TextUnits(" ".join(words))
    for n in (2, 3, 5, 8):
        assert duplicate_ngram_char_count(units, n) == naive_duplicate_ngram_chars(words, n)
        assert top_ngram_char_count(units, n) == naive_top_ngram_chars(words, n)


def test_c4_filter_drops_lorem_ipsum_and_pages_with_too_few_sentences():
    lorem = GOOD_EN + "\n\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
    assert C4QualityFilter().reject_reason(lorem, "en") == "c4_quality:lorem_ipsum"
    heading_list = "\n".join(f"Section {n} overview and reference" for n in range(30))
    assert C4QualityFilter().reject_reason(heading_list, "en") == "c4_quality:too_few_sentences"


def test_c4_curly_bracket_rule_keeps_docs_with_code_and_drops_code_dumps():
    assert C4QualityFilter().reject_reason(DOC_WITH_CODE, "en") is None
    dump = GOOD_EN + "\n\n" + "\n".join('{"key": {"a": [1, 2], "b": {}}}' for _ in range(40))
    assert C4QualityFilter().reject_reason(dump, "en") == "c4_quality:curly_bracket"
    # The original C4 rule: any bracket at all.
    assert (
        C4QualityFilter(max_curly_bracket_ratio=0).reject_reason(DOC_WITH_CODE, "en")
        == "c4_quality:curly_bracket"
    )


def test_sentences_are_counted_in_cjk_punctuation_too():
    assert count_sentences("一つ目。二つ目！三つ目？") == 3
    assert count_sentences("One. Two! Three? Version 3.11 is out") == 3


def test_fineweb_filter_drops_navigation_and_list_pages():
    navigation = "\n".join(["Home", "About us", "Products", "Blog", "Contact"] * 12)
    assert (
        FineWebQualityFilter().reject_reason(navigation, "en") == "fineweb_quality:line_punctuation"
    )
    menu = "\n".join(f"Item {n} in the catalogue." for n in range(80))
    assert FineWebQualityFilter().reject_reason(menu, "en") == "fineweb_quality:short_lines"
    lines = ARTICLES_EN["printing"] + ARTICLES_EN["printing"][:1] * 2
    assert (
        FineWebQualityFilter().reject_reason("\n".join(lines), "en")
        == "fineweb_quality:duplicate_line_chars"
    )
    one_word_lines = "\n".join(f"{word}." for word in GOOD_EN.split()[:60])
    assert (
        FineWebQualityFilter(
            max_short_line_ratio=None, max_duplicate_line_char_ratio=None
        ).reject_reason(one_word_lines, "en")
        == "fineweb_quality:newline_ratio"
    )


def test_fineweb_counts_lines_by_length_by_default_and_by_number_when_asked():
    # Four long prose lines and twelve short code lines: prose by length, a list by count.
    text = paragraphs_text(ARTICLES_EN["backups"]) + "\n" + "\n".join(["x = 1"] * 12)
    assert (
        FineWebQualityFilter(max_duplicate_line_char_ratio=None).reject_reason(text, "en") is None
    )
    published = FineWebQualityFilter(weigh_lines_by_length=False,
                                     max_duplicate_line_char_ratio=None)  # fmt: skip
    assert published.reject_reason(text, "en") == "fineweb_quality:short_lines"


def test_pii_formatter_replaces_emails_and_public_ips_but_keeps_documentation_addresses():
    text = (
        "Write to jane.doe@mail.example-corp.de or admin@example.com. The server 8.8.4.4 "
        "answers; the router is 192.168.0.1 and the loopback 127.0.0.1. Version 1.2.3.4.5 is "
        "not an address, nor is 999.1.1.1. IPv6 2a00:1450:4001:82b::200e is public, "
        "fe80::1 is link-local, and std::vector is C++."
    )
    redacted = PIIFormatter().redact(text)
    assert "jane.doe" not in redacted and "email@example.com" in redacted
    assert "admin@example.com" in redacted
    assert "8.8.4.4" not in redacted and "192.0.2.1" in redacted
    for kept in ("192.168.0.1", "127.0.0.1", "1.2.3.4.5", "999.1.1.1", "fe80::1", "std::vector"):
        assert kept in redacted
    assert "2a00:1450" not in redacted and "2001:db8::1" in redacted


def test_rejection_reasons_are_filter_name_and_rule_slugs():
    for junk in (KEYWORD_STUFFING, REPEATED_LINES, SYMBOL_SOUP, BULLET_SPAM):
        reason = first_rejection(ALL_FILTERS, junk, "en")
        name, _, rule = reason.partition(":")
        assert name in {f.name for f in ALL_FILTERS} and rule.replace("_", "").isalnum()
