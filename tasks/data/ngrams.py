"""Tokens of a text and 64-bit hashes of runs of them, for finding benchmark text in documents.

One tokenizer serves indexing and matching, so both sides see the same tokens: a token is a run
of word characters (letters, digits, combining marks; punctuation and symbols separate tokens
and are dropped), except that every character of a script written without spaces (Chinese,
Japanese kana, Thai, Lao, Khmer, Myanmar; `text_units.UNSEGMENTED_RANGES`) and of Hangul is a
token of its own. Tokens are compared case- and width-insensitively: each code point is folded
(NFKC, then casefold) when that gives one code point.

Everything is computed on the text's code point array with numpy, never per token in Python:
token hashes are polynomials over folded code points, and the hash of any run of tokens comes
from prefix sums of position-weighted token hashes multiplied by the inverse power of its start
(the base is odd, so invertible modulo 2**64), so runs of several lengths cost a few array
operations each. Index i of the code point array is index i of the Python string.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmforge.tasks.data.filters.text_units import (
    HANGUL_RANGES,
    UNICODE_SIZE,
    UNSEGMENTED_RANGES,
    power_table,
    codepoints,
    mix64,
)

_TOKEN_BASE = 0x100000001B3  # odd: invertible modulo 2**64
_GRAM_BASE = 0x9E3779B97F4A7C15  # odd, and another base than tokens'
_TOKEN_INVERSE = pow(_TOKEN_BASE, -1, 1 << 64)
_GRAM_INVERSE = pow(_GRAM_BASE, -1, 1 << 64)
# Code points from here on are folded as themselves: CJK extensions (letters, one token each),
# then unassigned and private-use planes; computing tables for them would cost ~0.5 s.
_TABLE_LIMIT = 0x20000
_CJK_EXTENSIONS = (0x20000, 0x3FFFF)
# Variation selectors are combining marks that only pick a glyph: they never make a token.
_VARIATION_SELECTORS = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))
# Marks stacked on one character-token letter (Thai vowel + tone mark) stay part of it.
_STACKED_MARKS = 2


# Character classes in one table (one lookup per character); every non-zero class is a word
# character.
WORD, MARK, SINGLE = 1, 2, 4  # SINGLE: a letter that is a token by itself


@dataclass(frozen=True)
class _TokenTables:
    """Per-code-point lookup tables, built once per process (~0.2 s)."""

    kind: np.ndarray  # uint8: 0 (not part of a word), WORD, WORD|MARK or WORD|SINGLE
    fold: np.ndarray  # uint32: NFKC + casefold when that is one code point


@functools.cache
def _tables() -> _TokenTables:
    kind = np.zeros(UNICODE_SIZE, np.uint8)
    fold = np.arange(UNICODE_SIZE, dtype=np.uint32)
    for cp in range(_TABLE_LIMIT):
        char = chr(cp)
        category = unicodedata.category(char)[0]
        if category in "LN":
            kind[cp] = WORD
        elif category == "M":
            kind[cp] = WORD | MARK
        folded = unicodedata.normalize("NFKC", char).casefold()
        if len(folded) != 1:
            folded = char.casefold()
        if len(folded) == 1:
            fold[cp] = ord(folded)
    first, last = _CJK_EXTENSIONS
    kind[first : last + 1] = WORD
    for first, last in _VARIATION_SELECTORS:
        kind[first : last + 1] = 0
    for first, last in UNSEGMENTED_RANGES + HANGUL_RANGES:
        letters = kind[first : last + 1] == WORD
        kind[first : last + 1][letters] = WORD | SINGLE
    return _TokenTables(kind, fold)


def _shift_right(mask: np.ndarray) -> np.ndarray:
    """mask[i - 1] at i (False at 0): "the previous character is ..."."""
    return np.concatenate(([False], mask[:-1]))


@dataclass(frozen=True)
class Tokens:
    """The tokens of one text: `starts`/`ends` are character offsets (`text[starts[i]:ends[i]]`
    is token i), `hashes` their folded 64-bit hashes."""

    starts: np.ndarray
    ends: np.ndarray
    hashes: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def tokenize(text: str) -> Tokens:
    """The text's tokens (see the module docstring), their offsets and hashes."""
    tables = _tables()
    cp = codepoints(text)
    kind = tables.kind[cp]
    word = kind != 0
    previous_word = _shift_right(word)
    if (kind > WORD).any():
        mark = (kind & MARK) != 0
        single = (kind & SINGLE) != 0
        in_single = single  # a character-token letter with the marks stacked on it
        for _ in range(_STACKED_MARKS):
            in_single = single | (mark & _shift_right(in_single))
        # A token also starts at every character-token letter and after one (unless at a mark
        # that belongs to it); a mark after a word character never starts one.
        after_single = _shift_right(in_single)
        starts = word & ~(mark & previous_word) & (~previous_word | single | after_single)
    else:  # most texts: tokens are runs of word characters
        starts = word & ~previous_word
    start_positions = np.flatnonzero(starts)
    if not len(start_positions):
        empty = np.zeros(0, np.int64)
        return Tokens(empty, empty, np.zeros(0, np.uint64))
    # A token ends where the next character is not a word character or starts another token.
    next_word = np.concatenate((word[1:], [False]))
    next_starts = np.concatenate((starts[1:], [False]))
    end_positions = np.flatnonzero(word & (~next_word | next_starts)) + 1
    folded = tables.fold[cp].astype(np.uint64)
    powers = power_table(_TOKEN_BASE, len(cp))
    inverse = power_table(_TOKEN_INVERSE, len(cp))
    prefix = np.zeros(len(cp) + 1, np.uint64)
    np.cumsum(folded * powers[:-1], dtype=np.uint64, out=prefix[1:])
    raw = (prefix[end_positions] - prefix[start_positions]) * inverse[start_positions]
    lengths = (end_positions - start_positions).astype(np.uint64)
    return Tokens(start_positions, end_positions, mix64(raw ^ lengths))


class TokenRuns:
    """Hashes of runs of consecutive tokens, each in O(1) from one prefix-sum array: the hash of
    a run depends only on its tokens, not on where it stands."""

    def __init__(self, token_hashes: np.ndarray):
        count = len(token_hashes)
        self.count = count
        self._inverse = power_table(_GRAM_INVERSE, count)
        self._prefix = np.zeros(count + 1, np.uint64)
        np.cumsum(
            token_hashes * power_table(_GRAM_BASE, count)[:-1],
            dtype=np.uint64,
            out=self._prefix[1:],
        )

    def hashes(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Hash of the run of `lengths[i]` tokens from token `starts[i]`, for each i; the length
        is mixed in, so runs of different lengths never share a hash by construction."""
        ends = starts + lengths
        raw = (self._prefix[ends] - self._prefix[starts]) * self._inverse[starts]
        return mix64(raw ^ lengths.astype(np.uint64))

    def all_runs(self, lengths: Sequence[int]) -> np.ndarray:
        """Hashes of every run of each of `lengths` tokens, length after length, by start
        within each length (`locate` maps an index of this array back)."""
        usable = [length for length in lengths if length <= self.count]
        sizes = [self.count - length + 1 for length in usable]
        raw = np.empty(sum(sizes), np.uint64)
        at = 0
        for length, size in zip(usable, sizes):
            block = raw[at : at + size]
            np.subtract(self._prefix[length:], self._prefix[:size], out=block)
            block *= self._inverse[:size]
            block ^= np.uint64(length)
            at += size
        return mix64(raw)

    def locate(self, lengths: Sequence[int], indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first token, length) of the runs at `indices` of `all_runs(lengths)`."""
        usable = np.array([length for length in lengths if length <= self.count], np.int64)
        offsets = np.concatenate(([0], np.cumsum(self.count - usable + 1)[:-1]))
        block = np.searchsorted(offsets, indices, side="right") - 1
        return indices - offsets[block], usable[block]
