"""The language step: identifies the text's language (fastText, `language_id`) and keeps
documents in the wanted languages identified confidently enough."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmforge.tasks.data.language_id import LanguageIdentifier
from lmforge.tasks.data.steps.base import Document, Step


@dataclass(frozen=True)
class LanguageFilter(Step):
    """Sets `lang` and `lang_score` (unless known); drops `low_confidence` (below
    `min_score(lang)`) and `unwanted_language` (not in `languages`, None keeps every language)."""

    identifier: LanguageIdentifier
    min_score: Callable[[str], float]
    languages: tuple[str, ...] | None
    name = "language"

    def apply(self, doc: Document) -> str | None:
        if doc.lang is None:  # not identified already (the extraction cache keeps it)
            doc.identify(self.identifier)
        if doc.lang_score < self.min_score(doc.lang):
            return "low_confidence"
        if self.languages is not None and doc.lang not in self.languages:
            return "unwanted_language"
        return None
