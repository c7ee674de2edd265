"""The one abstraction of the data stage's per-document work: a `Step` keeps a `Document`,
drops it with a reason, or transforms it; `StepChain` runs an ordered list of them and counts
each under its one name.

A `Document` is filled lazily as steps ask for it: the response, then the decoded page, the
extracted text, the text's units (words, lines) and the language. A step reads what it needs;
what an earlier step computed is never computed again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

from lmforge.tasks.data.declared_language import declared_language
from lmforge.tasks.data.filters.text_units import TextUnits
from lmforge.tasks.data.html_text import DecodedPage, decode_page
from lmforge.tasks.data.language_id import LanguageIdentifier
from lmforge.tasks.data.stats import StepStats
from lmforge.tasks.data.warc import WarcResponse


@dataclass(frozen=True)
class Drop:
    """Why a step drops a document: a short `reason` slug (the step name is the stage) and,
    where one exists, what it matched (`detail`, e.g. the benchmark item of a contamination)."""

    reason: str
    detail: str | None = None


class Document:
    """One response on its way through the steps. `text` is None until extraction sets it;
    `lang`/`lang_score` until language ID does; `columns` holds what steps add to the kept
    row (e.g. `quality_score`)."""

    def __init__(self, response: WarcResponse):
        self.response = response
        self.lang: str | None = None
        self.lang_score: float | None = None
        self.columns: dict[str, Any] = {}
        self._text: str | None = None
        self._units: TextUnits | None = None
        self._text_bytes: int | None = None

    @cached_property
    def page(self) -> DecodedPage:
        return decode_page(self.response.body, self.response.charset)

    @cached_property
    def declared_lang(self) -> str | None:
        """The language the page is published under (header, `<html lang>`, URL locale)."""
        response = self.response
        return declared_language(response.url, self.page.html, response.content_language)

    @cached_property
    def charset(self) -> str:
        """The codec the payload was decoded with."""
        return self.page.encoding

    def identify(self, identifier: LanguageIdentifier) -> None:
        """Set `lang` and `lang_score` from the text."""
        prediction = identifier.identify(self._text or "")
        self.lang, self.lang_score = prediction.lang, prediction.score

    def restore(self, text: str, lang: str, lang_score: float, declared_lang: str | None,
                charset: str) -> None:  # fmt: skip
        """What the early steps made of this document, read back from where they were kept
        (`extraction_cache`): its payload is not needed again."""
        self.text, self.lang, self.lang_score = text, lang, lang_score
        self.__dict__.update(declared_lang=declared_lang, charset=charset)  # the cached values

    @property
    def text(self) -> str | None:
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        if value != self._text:
            self._text, self._units, self._text_bytes = value, None, None

    @property
    def units(self) -> TextUnits:
        """Words, lines and paragraphs of the text, computed once for every step that asks."""
        if self._units is None:
            self._units = TextUnits(self._text or "")
        return self._units

    @property
    def size(self) -> int:
        """What the step statistics count: payload bytes before extraction, UTF-8 bytes of the
        text after it."""
        if self._text is None:
            return len(self.response.body)
        if self._text_bytes is None:
            self._text_bytes = len(self._text.encode("utf-8"))
        return self._text_bytes


class Step(ABC):
    """One step of the data stage. `name` is the one name it is counted and configured under
    (stats, funnel, MLflow, the `stage` of `removed/` rows, its DataConfig field)."""

    name: ClassVar[str]

    @abstractmethod
    def apply(self, doc: Document) -> str | Drop | None:
        """None keeps the document (a transforming step changes `doc.text` first); a reason slug
        or a `Drop` drops it."""


@dataclass(frozen=True)
class Removal:
    """A dropped document: the step that dropped it, why, and its language if known."""

    stage: str
    reason: str
    lang: str | None = None
    detail: str | None = None


class StepChain:
    """Runs documents through `steps` in order, counting documents and bytes in and out and the
    drop reasons of each step in `stats` (which chains run one after the other can share)."""

    def __init__(self, steps: Sequence[Step], stats: StepStats | None = None):
        self.steps = tuple(steps)
        self.stats = stats if stats is not None else StepStats([step.name for step in steps])

    def run(self, doc: Document) -> Removal | None:
        """None when every step kept the document, else the first step's drop."""
        stats = self.stats
        for step in self.steps:
            size_in = doc.size
            verdict = step.apply(doc)
            if verdict is None:
                stats.passed(step.name, size_in, doc.size)
                continue
            drop = verdict if isinstance(verdict, Drop) else Drop(verdict)
            stats.dropped(step.name, drop.reason, size_in, doc.lang)
            return Removal(step.name, drop.reason, doc.lang, drop.detail)
        return None
