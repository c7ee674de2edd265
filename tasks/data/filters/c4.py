"""The document-level rules of C4 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning
with a Unified Text-to-Text Transformer", section 2.2).

C4 dropped every page containing a curly bracket, to remove code. Technical documentation
legitimately shows code, so the default here drops a page only when brackets are a visible share
of its characters (code or markup dumps, symbol soup); `max_curly_bracket_ratio=0` restores C4.
"""

from __future__ import annotations

import re
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as config_dataclass

from lmforge.tasks.data.filters.base import DocumentFilter
from lmforge.tasks.data.filters.text_units import TERMINAL_PUNCTUATION, TextUnits

_LOREM_IPSUM = re.compile(r"lorem\s+ipsum", re.IGNORECASE)
_TERMINAL = "".join(sorted(TERMINAL_PUNCTUATION - set("。！？．｡")))
# A sentence ends at a terminal mark followed by optional closing marks and whitespace or the
# end; full-width CJK marks end a sentence wherever they stand.
_SENTENCE_END = re.compile(rf"[{re.escape(_TERMINAL)}]+[\"'”’»」』)\]]*(?=\s|$)|[。！？．｡]+")


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class C4QualityFilter(DocumentFilter):
    """Drops placeholder text, code/markup dumps and pages with too few sentences."""

    name = "c4_quality"

    reject_lorem_ipsum: bool = Field(True, description="Drop placeholder text (lorem ipsum).")
    max_curly_bracket_ratio: float | None = Field(
        0.01, ge=0.0, le=1.0, description="Largest share of non-space characters that are { or }."
    )
    min_sentences: int | None = Field(3, ge=0, description="Fewest sentences a document may have.")

    def check(self, units: TextUnits, lang: str | None) -> str | None:
        text = units.text
        if self.reject_lorem_ipsum and _LOREM_IPSUM.search(text):
            return self.reason("lorem_ipsum")
        if self.max_curly_bracket_ratio is not None:
            brackets = text.count("{") + text.count("}")
            chars = units.char_count()
            if brackets and (chars == 0 or brackets / chars > self.max_curly_bracket_ratio):
                return self.reason("curly_bracket")
        if self.min_sentences is not None:
            if count_sentences(text) < self.min_sentences:
                return self.reason("too_few_sentences")
        return None


def count_sentences(text: str) -> int:
    """Sentence-final punctuation marks (a run of them counts once)."""
    return len(_SENTENCE_END.findall(text))
