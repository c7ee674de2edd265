"""The one interface every quality filter implements: keep a document, or say why not. A filter
is a text step of the data stage (`steps.base.Step`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from lmforge.tasks.data.filters.text_units import TextUnits
from lmforge.tasks.data.steps.base import Document, Step


@dataclass(frozen=True)
class DocumentFilter(Step, ABC):
    """A document filter: `reject_reason(text, lang)` returns None to keep the document, or a
    short slug `<filter name>:<rule>` (e.g. `gopher_quality:mean_word_length`) to drop it.

    Subclasses are frozen dataclasses whose fields are the thresholds (published defaults, any
    of them configurable; a rule whose threshold is None is off). They implement `check`, which
    receives the text's units computed once and shared by all filters of a chain.
    """

    name = "filter"

    def apply(self, doc: Document) -> str | None:
        reason = self.check(doc.units, doc.lang)
        return None if reason is None else reason.removeprefix(f"{self.name}:")

    def reject_reason(self, text: str, lang: str | None = None) -> str | None:
        return self.check(TextUnits(text), lang)

    @abstractmethod
    def check(self, units: TextUnits, lang: str | None) -> str | None:
        """None to keep; otherwise `self.reason(rule)`."""

    def reason(self, rule: str) -> str:
        return f"{self.name}:{rule}"


def first_rejection(
    filters: list[DocumentFilter] | tuple[DocumentFilter, ...], text: str, lang: str | None
) -> str | None:
    """Run `filters` in order on one text; the first rejection's reason, or None to keep it."""
    units = TextUnits(text)
    for document_filter in filters:
        reason = document_filter.check(units, lang)
        if reason is not None:
            return reason
    return None
