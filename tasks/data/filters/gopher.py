"""The quality and repetition rules of MassiveText (Rae et al. 2021, "Scaling Language Models:
Methods, Analysis & Insights from Training Gopher", appendix A.1.1), published thresholds as
defaults.

Words are whitespace-separated tokens as in the paper (characters for scripts written without
spaces, see `text_units`); stop words are matched case-insensitively and only on English, the
language the rule was made for; word-length rules are skipped for text mostly in dense scripts.
"""

from __future__ import annotations

import functools

import numpy as np
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as config_dataclass
from lmforge.tasks.data.filters.base import DocumentFilter
from lmforge.tasks.data.filters.text_units import (
    TextUnits,
    hash_strings,
    ngram_hashes,
    nonempty_lines,
    paragraphs,
)

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# A bullet is one of these marks followed by a space ("- item"), so "-h, --help" is no bullet.
BULLET_MARKS = ("•", "‣", "◦", "⁃", "▪", "▫", "●", "○", "■", "□", "-", "*", "–", "·", "+")
ELLIPSES = ("...", "…")


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class GopherQualityFilter(DocumentFilter):
    """Drops documents that do not look like prose: too short or too long, odd word lengths,
    symbol-heavy, bullet-list or ellipsis-line heavy, mostly non-words, or (English only) without
    the stop words every English sentence has."""

    name = "gopher_quality"

    min_words: int | None = Field(50, ge=0, description="Fewest words a document may have.")
    max_words: int | None = Field(100_000, ge=1, description="Most words a document may have.")
    min_mean_word_length: float | None = Field(
        3.0, ge=0.0, description="Shortest mean word length, in characters."
    )
    max_mean_word_length: float | None = Field(
        10.0, gt=0.0, description="Longest mean word length, in characters."
    )
    max_hash_word_ratio: float | None = Field(
        0.1, ge=0.0, description="Most `#` per word (hashtag and markup dumps)."
    )
    max_ellipsis_word_ratio: float | None = Field(
        0.1, ge=0.0, description="Most ellipses (`...`, `…`) per word."
    )
    max_bullet_line_ratio: float | None = Field(
        0.9, ge=0.0, le=1.0, description="Largest share of lines that start with a bullet."
    )
    max_ellipsis_line_ratio: float | None = Field(
        0.3, ge=0.0, le=1.0, description="Largest share of lines that end with an ellipsis."
    )
    min_alpha_word_ratio: float | None = Field(
        0.8, ge=0.0, le=1.0, description="Smallest share of words with a letter in them."
    )
    min_stop_words: int | None = Field(
        2, ge=0, description="Fewest English stop words (the, be, to, of, and, that, have, with)."
    )
    stop_word_languages: tuple[str, ...] = Field(
        ("en",), description="Languages the stop-word rule applies to (ISO 639-1)."
    )

    def check(self, units: TextUnits, lang: str | None) -> str | None:
        n_words = len(units)
        if self.min_words is not None and n_words < self.min_words:
            return self.reason("too_few_words")
        if self.max_words is not None and n_words > self.max_words:
            return self.reason("too_many_words")
        if n_words == 0:
            return None
        if not units.dense and (
            self.min_mean_word_length is not None or self.max_mean_word_length is not None
        ):
            mean_length = float(units.lengths.mean())
            if self.min_mean_word_length is not None and mean_length < self.min_mean_word_length:
                return self.reason("mean_word_length")
            if self.max_mean_word_length is not None and mean_length > self.max_mean_word_length:
                return self.reason("mean_word_length")
        text = units.text
        if self.max_hash_word_ratio is not None:
            if text.count("#") / n_words > self.max_hash_word_ratio:
                return self.reason("hash_ratio")
        if self.max_ellipsis_word_ratio is not None:
            ellipses = text.count("...") + text.count("…")
            if ellipses / n_words > self.max_ellipsis_word_ratio:
                return self.reason("ellipsis_ratio")
        lines = nonempty_lines(text)
        if lines and self.max_bullet_line_ratio is not None:
            bullets = sum(1 for line in lines if _is_bullet(line))
            if bullets / len(lines) > self.max_bullet_line_ratio:
                return self.reason("bullet_lines")
        if lines and self.max_ellipsis_line_ratio is not None:
            ellipsis_lines = sum(1 for line in lines if line.endswith(ELLIPSES))
            if ellipsis_lines / len(lines) > self.max_ellipsis_line_ratio:
                return self.reason("ellipsis_lines")
        if self.min_alpha_word_ratio is not None:
            if float(units.has_letter.mean()) < self.min_alpha_word_ratio:
                return self.reason("alpha_words")
        if self.min_stop_words is not None and lang in self.stop_word_languages:
            stop_words = np.isin(units.hashes, _stop_word_hashes()).sum()
            if stop_words < self.min_stop_words:
                return self.reason("stop_words")
        return None


def _is_bullet(line: str) -> bool:
    return len(line) > 1 and line[0] in BULLET_MARKS and line[1].isspace() or line == "•"


@functools.cache
def _stop_word_hashes() -> np.ndarray:
    return hash_strings(list(GOPHER_STOP_WORDS))


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class GopherRepetitionFilter(DocumentFilter):
    """Drops documents that repeat themselves: duplicated lines or paragraphs, one n-gram
    covering too much of the text, or too much text inside n-grams seen earlier in it.

    Character fractions are over non-space characters. In text mostly in dense scripts, where
    units are single characters, n-grams are `dense_ngram_scale` times longer (two characters
    carry about what one English word does).
    """

    name = "gopher_repetition"

    max_duplicate_line_fraction: float | None = Field(
        0.30, ge=0.0, le=1.0, description="Largest share of lines that repeat an earlier line."
    )
    max_duplicate_paragraph_fraction: float | None = Field(
        0.30, ge=0.0, le=1.0,
        description="Largest share of paragraphs that repeat an earlier paragraph.",
    )  # fmt: skip
    max_duplicate_line_char_fraction: float | None = Field(
        0.20, ge=0.0, le=1.0, description="Largest share of characters in repeated lines."
    )
    max_duplicate_paragraph_char_fraction: float | None = Field(
        0.20, ge=0.0, le=1.0, description="Largest share of characters in repeated paragraphs."
    )
    top_ngram_char_fractions: tuple[tuple[int, float], ...] = Field(
        ((2, 0.20), (3, 0.18), (4, 0.16)),
        description="(n, most characters covered by the most frequent n-gram, as a share).",
    )
    duplicate_ngram_char_fractions: tuple[tuple[int, float], ...] = Field(
        ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
        description="(n, most characters inside n-grams seen earlier in the text, as a share).",
    )
    dense_ngram_scale: int = Field(
        3, ge=1, description="n-gram length factor for text in scripts written without spaces."
    )

    def check(self, units: TextUnits, lang: str | None) -> str | None:
        text = units.text
        for pieces, count_limit, char_limit, rule in (
            (
                nonempty_lines(text),
                self.max_duplicate_line_fraction,
                self.max_duplicate_line_char_fraction,
                "lines",
            ),
            (
                paragraphs(text),
                self.max_duplicate_paragraph_fraction,
                self.max_duplicate_paragraph_char_fraction,
                "paragraphs",
            ),
        ):
            count_fraction, char_fraction = duplicate_fractions(pieces)
            if count_limit is not None and count_fraction > count_limit:
                return self.reason(f"duplicate_{rule}")
            if char_limit is not None and char_fraction > char_limit:
                return self.reason(f"duplicate_{rule}_chars")
        total_chars = units.char_count()
        if total_chars == 0:
            return None
        scale = self.dense_ngram_scale if units.dense else 1
        for n, limit in self.top_ngram_char_fractions:
            if top_ngram_char_count(units, n * scale) / total_chars > limit:
                return self.reason(f"top_{n}_gram")
        rules = sorted(self.duplicate_ngram_char_fractions)
        for index, (n, limit) in enumerate(rules):
            fraction = duplicate_ngram_char_count(units, n * scale) / total_chars
            if fraction > limit:
                return self.reason(f"duplicate_{n}_grams")
            # Longer n-grams cover no more than shorter ones: below every later limit, stop.
            if all(fraction <= later for _, later in rules[index + 1 :]):
                break
        return None


def duplicate_fractions(pieces: list[str]) -> tuple[float, float]:
    """(share of pieces equal to an earlier piece, share of characters in those pieces)."""
    if not pieces:
        return 0.0, 0.0
    seen: set[str] = set()
    duplicates = duplicate_chars = total_chars = 0
    for piece in pieces:
        total_chars += len(piece)
        if piece in seen:
            duplicates += 1
            duplicate_chars += len(piece)
        else:
            seen.add(piece)
    return duplicates / len(pieces), duplicate_chars / max(total_chars, 1)


def _sorted_ngrams(units: TextUnits, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n-gram hashes in sorted order, their positions); a stable sort keeps each value's first
    occurrence first among its equals."""
    grams = ngram_hashes(units.hashes, n)
    order = np.argsort(grams, kind="stable")
    return grams[order], order


def top_ngram_char_count(units: TextUnits, n: int) -> int:
    """Characters in all occurrences of the most frequent n-gram (0 if none repeats); among
    equally frequent n-grams, the one with the most characters."""
    values, order = _sorted_ngrams(units, n)
    if len(values) < 2:
        return 0
    run_starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    run_lengths = np.diff(np.concatenate((run_starts, [len(values)])))
    most = int(run_lengths.max())
    if most < 2:
        return 0
    starts = order[run_starts[run_lengths == most]]
    cumulative = units.cumulative_lengths
    return most * int((cumulative[starts + n] - cumulative[starts]).max())


def duplicate_ngram_char_count(units: TextUnits, n: int) -> int:
    """Characters of the units covered by n-grams that already occurred earlier in the text
    (each unit counted once, however many repeated n-grams overlap it)."""
    values, order = _sorted_ngrams(units, n)
    if len(values) < 2:
        return 0
    repeat_starts = order[1:][values[1:] == values[:-1]]
    if not len(repeat_starts):
        return 0
    coverage = np.zeros(len(units) + 1, np.int32)
    np.add.at(coverage, repeat_starts, 1)
    np.add.at(coverage, repeat_starts + n, -1)
    covered = np.cumsum(coverage[:-1]) > 0
    return int(units.lengths[covered].sum())
