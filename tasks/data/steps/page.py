"""The steps every response goes through before it has text: read checks, the HTML check and
main-text extraction (the URL filter, `filters.url.URLFilter`, runs between the first two)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from resiliparse.parse.html import HTMLParserException

from lmforge.tasks.data.html_text import ExtractionConfig, extract_main_text, html_rejection
from lmforge.tasks.data.steps.base import Document, Step

log = logging.getLogger(__name__)


class ReadCheck(Step):
    """Keeps complete HTTP 200 responses: `invalid_http`, `http_<status>` or
    `payload_too_large` otherwise."""

    name = "read"

    def apply(self, doc: Document) -> str | None:
        response = doc.response
        if response.status is None:
            return "invalid_http"
        if response.status != 200:
            return f"http_{response.status}"
        if response.oversized:
            return "payload_too_large"
        return None


class HtmlCheck(Step):
    """Keeps HTML payloads: `empty_payload`, `binary_payload` or `not_html` otherwise."""

    name = "html"

    def apply(self, doc: Document) -> str | None:
        return html_rejection(doc.response.content_type, doc.response.body)


@dataclass(frozen=True)
class Extraction(Step):
    """Sets the document's text to the page's main text: `parse_error` or `no_main_text` when
    there is none."""

    config: ExtractionConfig
    name = "extract"

    def apply(self, doc: Document) -> str | None:
        try:
            text = extract_main_text(doc.page.html, self.config)
        except HTMLParserException as error:
            log.warning("%s at offset %d: HTML extraction failed: %s",
                        doc.response.warc_file, doc.response.offset, error)  # fmt: skip
            return "parse_error"
        if not text:
            return "no_main_text"
        doc.text = text
        return None
