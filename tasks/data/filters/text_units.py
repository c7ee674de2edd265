"""Words, lines and n-gram hashes of a text, computed with numpy over its code points.

A *unit* is what the quality rules count as a word: a whitespace-separated token (as in the
Gopher paper), except that scripts written without spaces (Chinese, Japanese kana, Thai, Lao,
Khmer, Myanmar) count each character as a unit, so English-tuned word counts do not wipe them out.

Everything per unit (length, has a letter, hash) is computed on the code point array at once:
pure-Python loops over words and n-grams were datatrove's bottleneck. Index i of the code point
array is index i of the Python string, so `text[start:end]` recovers any unit.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import numpy as np

UNICODE_SIZE = sys.maxunicode + 1
# Scripts written without spaces between words: each character is a unit.
UNSEGMENTED_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width katakana
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)
# Hangul is written with spaces, but its words are a few syllables long: word-length rules tuned
# on English do not apply to it either.
HANGUL_RANGES = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))
# Above this share of letters in dense scripts, word-length rules are skipped.
DENSE_SCRIPT_SHARE = 0.3

_UNIT_BASE = 0x100000001B3  # odd, so it is invertible modulo 2**64
_NGRAM_BASE = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class _Tables:
    """Per-code-point lookup tables, built once per process (~0.3 s)."""

    is_space: np.ndarray
    is_letter: np.ndarray
    is_unsegmented: np.ndarray
    is_dense: np.ndarray
    lower: np.ndarray


@functools.cache
def _tables() -> _Tables:
    chars = [chr(cp) for cp in range(UNICODE_SIZE)]
    is_space = np.fromiter((c.isspace() for c in chars), bool, UNICODE_SIZE)
    is_letter = np.fromiter((c.isalpha() for c in chars), bool, UNICODE_SIZE)
    lower = np.fromiter(
        (ord(low) if len(low := c.lower()) == 1 else ord(c) for c in chars),
        np.uint32,
        UNICODE_SIZE,
    )
    is_unsegmented = np.zeros(UNICODE_SIZE, bool)
    for first, last in UNSEGMENTED_RANGES:
        is_unsegmented[first : last + 1] = True
    is_unsegmented &= is_letter | (np.arange(UNICODE_SIZE) >= 0x20000)
    is_dense = is_unsegmented.copy()
    for first, last in HANGUL_RANGES:
        is_dense[first : last + 1] = True
    is_dense &= is_letter
    return _Tables(is_space, is_letter, is_unsegmented, is_dense, lower)


def codepoints(text: str) -> np.ndarray:
    """The text as a uint32 array of code points (lone surrogates become U+FFFD)."""
    data = text.encode("utf-32-le", errors="replace")
    return np.frombuffer(data, dtype=np.uint32)


@functools.cache
def _powers(base: int, size: int) -> np.ndarray:
    # base**i modulo 2**64 for i < size; sizes are rounded up to powers of two so few are cached.
    rest = np.cumprod(np.full(size - 1, base, dtype=np.uint64), dtype=np.uint64)
    return np.concatenate((np.ones(1, np.uint64), rest))


def power_table(base: int, length: int) -> np.ndarray:
    size = 1 << max(10, (length + 1).bit_length())
    return _powers(base, size)[: length + 1]


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads polynomial hashes over all 64 bits."""
    x = values.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def ngram_hashes(unit_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every run of `n` consecutive units (empty when there are fewer than n)."""
    count = len(unit_hashes) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    combined = unit_hashes[:count].copy()
    for k in range(1, n):
        combined *= _NGRAM_BASE
        combined += unit_hashes[k : k + count]
    return mix64(combined)


class TextUnits:
    """The units (words) of one text, with per-unit arrays computed on demand.

    `starts`/`ends`: code point offsets of each unit; `lengths`; `has_letter`; `hashes`
    (case-insensitive 64-bit hash per unit); `dense`: the text is mostly in scripts where
    word-length rules tuned on English make no sense.
    """

    def __init__(self, text: str):
        tables = _tables()
        self.text = text
        self.cp = codepoints(text)
        space = tables.is_space[self.cp]
        unsegmented = tables.is_unsegmented[self.cp]
        previous_space = np.concatenate(([True], space[:-1]))
        previous_unsegmented = np.concatenate(([False], unsegmented[:-1]))
        # A unit starts at a non-space after a space, at every unsegmented character, and at the
        # first character after an unsegmented one.
        starts = ~space & (previous_space | unsegmented | previous_unsegmented)
        next_space = np.concatenate((space[1:], [True]))
        next_unsegmented = np.concatenate((unsegmented[1:], [False]))
        ends = ~space & (next_space | unsegmented | next_unsegmented)
        self.starts = np.flatnonzero(starts)
        self.ends = np.flatnonzero(ends) + 1

    def __len__(self) -> int:
        return len(self.starts)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    @functools.cached_property
    def cumulative_lengths(self) -> np.ndarray:
        """Characters in units before each unit: window sums are differences of two entries."""
        return np.concatenate(([0], np.cumsum(self.lengths, dtype=np.int64)))

    @functools.cached_property
    def _letters(self) -> np.ndarray:
        return _tables().is_letter[self.cp]

    @functools.cached_property
    def dense(self) -> bool:
        """Whether most letters are in scripts written without spaces, or Hangul. Computed
        on demand: shingling (dedup) needs only the units."""
        letter_count = int(self._letters.sum())
        dense_count = int(_tables().is_dense[self.cp].sum())
        return letter_count > 0 and dense_count / letter_count > DENSE_SCRIPT_SHARE

    @functools.cached_property
    def has_letter(self) -> np.ndarray:
        """Whether each unit contains at least one alphabetic character."""
        if not len(self):
            return np.zeros(0, bool)
        cumulative = np.concatenate(([0], np.cumsum(self._letters, dtype=np.int64)))
        return cumulative[self.ends] > cumulative[self.starts]

    @functools.cached_property
    def hashes(self) -> np.ndarray:
        """Case-insensitive hash of each unit: a polynomial over its lower-cased code points,
        taken from prefix sums so that all units are hashed with a handful of array operations."""
        if not len(self):
            return np.zeros(0, np.uint64)
        lowered = _tables().lower[self.cp].astype(np.uint64)
        powers = power_table(_UNIT_BASE, len(lowered))
        inverse = power_table(pow(_UNIT_BASE, -1, 1 << 64), len(lowered))
        prefix = np.zeros(len(lowered) + 1, np.uint64)
        np.cumsum(lowered * powers[:-1], dtype=np.uint64, out=prefix[1:])
        raw = (prefix[self.ends] - prefix[self.starts]) * inverse[self.starts]
        return mix64(raw ^ self.lengths.astype(np.uint64))

    def unit(self, index: int) -> str:
        return self.text[self.starts[index] : self.ends[index]]

    def char_count(self) -> int:
        """Non-space characters: the denominator of the character-fraction rules."""
        return int(self.lengths.sum())


def hash_strings(words: list[str]) -> np.ndarray:
    """The unit hashes `TextUnits` would give these single words (for stop-word lists)."""
    return np.array([TextUnits(word).hashes[0] for word in words], dtype=np.uint64)


def char_shingle_hashes(text: str, n: int) -> np.ndarray:
    """Hashes of all n-character runs of the lower-cased text with whitespace removed: the
    shingles for languages written without spaces (and Korean, whose words are long)."""
    tables = _tables()
    cp = codepoints(text)
    cp = tables.lower[cp[~tables.is_space[cp]]].astype(np.uint64)
    if len(cp) == 0:
        return np.zeros(0, np.uint64)
    return ngram_hashes(mix64(cp), min(n, len(cp)))


def word_shingle_hashes(units: TextUnits, n: int) -> np.ndarray:
    """Hashes of all runs of n units; a text shorter than n units is one shingle."""
    if len(units) == 0:
        return np.zeros(0, np.uint64)
    return ngram_hashes(units.hashes, min(n, len(units)))


def nonempty_lines(text: str) -> list[str]:
    """The text's lines, stripped, without blank ones."""
    return [line for line in (raw.strip() for raw in text.split("\n")) if line]


def paragraphs(text: str) -> list[str]:
    """Blocks separated by blank lines, stripped, without empty ones."""
    blocks = (block.strip() for block in text.replace("\r", "").split("\n\n"))
    return [block for block in blocks if block]


# Sentence-final punctuation across scripts: Latin/Cyrillic/Greek, CJK full-width, Arabic and
# Urdu question mark and full stop, Devanagari danda, Armenian full stop.
TERMINAL_PUNCTUATION = frozenset(".!?…。！？．｡؟۔।॥։")
# Closing quotes and brackets that may follow the terminal mark ("He left." or (see below.)).
CLOSING_MARKS = "\"'”’»」』)]"


def ends_with_terminal_punctuation(line: str) -> bool:
    stripped = line.rstrip(CLOSING_MARKS + " ")
    return bool(stripped) and stripped[-1] in TERMINAL_PUNCTUATION
