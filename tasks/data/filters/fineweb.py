"""FineWeb's own line-level rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3.3),
published thresholds as defaults.

The published rules count lines. Documentation interleaves long prose lines with many short
structural ones (headings, option names, code), so a page of real paragraphs plus one code
listing looks like a menu by line count. By default each line therefore weighs by its length:
the rules ask what share of the *text* ends sentences or sits in short lines.
`weigh_lines_by_length=False` gives the published line-count form.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as config_dataclass

from lmforge.tasks.data.filters.base import DocumentFilter
from lmforge.tasks.data.filters.gopher import duplicate_fractions
from lmforge.tasks.data.filters.text_units import (
    TextUnits,
    ends_with_terminal_punctuation,
    nonempty_lines,
)


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class FineWebQualityFilter(DocumentFilter):
    """Drops pages whose lines rarely end a sentence, are mostly short, repeat each other, or
    that are lists (many line breaks per word).

    Line length is counted in characters; in text mostly in dense scripts a character carries
    about what a short word does, so the short-line length is scaled by `dense_line_scale`.
    """

    name = "fineweb_quality"

    min_line_punct_ratio: float | None = Field(
        0.12, ge=0.0, le=1.0, description="Smallest share of lines that end a sentence."
    )
    max_short_line_ratio: float | None = Field(
        0.67, ge=0.0, le=1.0, description="Largest share of short lines (see short_line_chars)."
    )
    short_line_chars: int = Field(30, ge=1, description="A line shorter than this is short.")
    max_duplicate_line_char_ratio: float | None = Field(
        0.1, ge=0.0, le=1.0, description="Largest share of characters in repeated lines."
    )
    max_newline_word_ratio: float | None = Field(
        0.3, ge=0.0, description="Most line breaks per word (lists rather than prose)."
    )
    weigh_lines_by_length: bool = Field(
        True, description="Line shares count characters (true) or lines (false)."
    )
    dense_line_scale: float = Field(
        0.5, gt=0.0, description="short_line_chars factor for scripts written without spaces."
    )

    def check(self, units: TextUnits, lang: str | None) -> str | None:
        lines = nonempty_lines(units.text)
        if not lines:
            return self.reason("no_lines")
        weights = [len(line) if self.weigh_lines_by_length else 1 for line in lines]
        total = sum(weights)
        if self.min_line_punct_ratio is not None:
            ended = sum(
                w
                for w, line in zip(weights, lines, strict=True)
                if ends_with_terminal_punctuation(line)
            )
            if ended / total < self.min_line_punct_ratio:
                return self.reason("line_punctuation")
        if self.max_short_line_ratio is not None:
            limit = self.short_line_chars * (self.dense_line_scale if units.dense else 1.0)
            short = sum(w for w, line in zip(weights, lines, strict=True) if len(line) < limit)
            if short / total > self.max_short_line_ratio:
                return self.reason("short_lines")
        if self.max_duplicate_line_char_ratio is not None:
            _, char_fraction = duplicate_fractions(lines)
            if char_fraction > self.max_duplicate_line_char_ratio:
                return self.reason("duplicate_line_chars")
        if self.max_newline_word_ratio is not None and len(units):
            # Line breaks between non-empty lines: blank lines between paragraphs are formatting.
            if (len(lines) - 1) / len(units) > self.max_newline_word_ratio:
                return self.reason("newline_ratio")
        return None
