"""From an HTTP payload to the main text of a page: is it HTML, which charset, what is the text.

Charset order (WHATWG's, plus one pragmatic rule): a byte-order mark; then a payload that is
valid UTF-8 with non-ASCII bytes is UTF-8 whatever was declared (legacy text almost never
validates as UTF-8, while mislabelled UTF-8 pages are common); then the HTTP header charset; then
`<meta charset>` / `http-equiv`; then uchardet detection. A declared charset that does not decode
the payload cleanly is skipped in favour of the next source.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as config_dataclass

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding, map_encoding_to_html5
from resiliparse.parse.html import HTMLTree

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Declared types that a text payload may hide HTML behind (misconfigured servers).
GENERIC_TYPES = frozenset(
    {"text/plain", "application/octet-stream", "application/unknown", "unknown/unknown"}
)
BINARY_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"\xff\xd8\xff", b"%PDF-", b"PK\x03\x04",
    b"\x1f\x8b", b"RIFF", b"\x00\x00\x01\x00", b"wOFF", b"wOF2", b"OggS", b"ID3", b"BM",
)  # fmt: skip
SNIFF_BYTES = 4096
# WHATWG MIME sniffing: a payload starting with one of these tags (after whitespace) is HTML.
_HTML_START = re.compile(
    rb"\s*(?:<!doctype\s+html|<html|<head|<body|<script|<iframe|<h1|<div|<font|<table|<a|<style"
    rb"|<title|<b|<br|<p|<!--)[\s>]",
    re.IGNORECASE,
)
# A page declared as HTML must still contain markup somewhere near the top.
_ANY_TAG = re.compile(rb"<(?:!doctype|[a-z][a-z0-9]*)[\s>/]", re.IGNORECASE)
_META_CHARSET = re.compile(
    rb"<meta\b[^>]*?\bcharset\s*=\s*[\"']?\s*([a-zA-Z0-9_.:-]+)", re.IGNORECASE
)
# Python codecs that are the supersets browsers actually decode these labels with.
_BROWSER_CODECS = {
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "big5": "big5hkscs",
    "gbk": "gb18030",
    "gb2312": "gb18030",
}
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))  # fmt: skip


EXTRACTORS = ("resiliparse", "trafilatura")


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ExtractionConfig:
    """Which main-content extractor runs and with which options. trafilatura runs with
    FineWeb's settings (precision over recall, no comments); the other fields are resiliparse's.
    """

    extractor: Literal["resiliparse", "trafilatura"] = Field(
        "resiliparse",
        description="Main-content extractor: resiliparse (fast) or trafilatura (FineWeb's "
        "choice, several times slower; needs the trafilatura extra).",
    )
    main_content: bool = Field(
        True, description="Drop navigation, headers, footers and sidebars (resiliparse)."
    )
    list_bullets: bool = Field(
        True, description="Keep list bullets: the Gopher bullet-line rule needs them (resiliparse)."
    )
    alt_texts: bool = Field(False, description="Keep images' alt texts (resiliparse).")
    links: bool = Field(False, description="Keep link targets (resiliparse).")
    form_fields: bool = Field(False, description="Keep form fields (resiliparse).")
    noscript: bool = Field(False, description="Keep <noscript> content (resiliparse).")

    def __post_init__(self) -> None:
        if self.extractor == "trafilatura":
            _trafilatura()  # not installed: fail when the config is made, not on every page


@dataclass(frozen=True)
class DecodedPage:
    """A payload decoded to Unicode: the text, the Python codec used, and where it came from
    (`bom`, `utf-8`, `header`, `meta` or `detected`)."""

    html: str
    encoding: str
    source: str


def html_rejection(content_type: str | None, body: bytes) -> str | None:
    """None when the payload is HTML; otherwise the reason it is not: `empty_payload`,
    `binary_payload` or `not_html`. Decided from the declared type *and* the payload's first
    bytes, since either alone is often wrong on the web."""
    head = body[:SNIFF_BYTES]
    if not head.strip():
        return "empty_payload"
    if head.startswith(BINARY_SIGNATURES) or b"\x00" in head:
        utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        if not utf16:
            return "binary_payload"
        head = head.decode("utf-16", errors="ignore").encode("utf-8")
    declared = (content_type or "").lower()
    if declared in HTML_TYPES:
        return None if _ANY_TAG.search(head) else "not_html"
    if _HTML_START.match(head.removeprefix(codecs.BOM_UTF8)):
        # A textual or missing type with a payload that opens like HTML: browsers sniff it too.
        if not declared or declared in GENERIC_TYPES or declared.startswith("text/"):
            return None
    return "not_html"


def python_codec(label: str | None) -> str | None:
    """The Python codec for a charset label as browsers interpret it, or None if unknown."""
    if not label:
        return None
    label = label.strip().lower()
    mapped = map_encoding_to_html5(label)
    if mapped == "utf-8" and _python_name(label) != "utf-8":
        # resiliparse maps labels outside the WHATWG table to its UTF-8 fallback: ask Python.
        mapped = _python_name(label)
    if mapped is None:
        return None
    mapped = _BROWSER_CODECS.get(mapped, mapped)
    return _python_name(mapped)


def _python_name(label: str) -> str | None:
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def meta_charset(body: bytes) -> str | None:
    """The charset a `<meta charset>` or `http-equiv` tag declares near the top, if any."""
    match = _META_CHARSET.search(body[:SNIFF_BYTES])
    return match.group(1).decode("ascii").lower() if match else None


def decode_page(body: bytes, header_charset: str | None = None) -> DecodedPage:
    """Decode an HTML payload to Unicode (see the module docstring for the order of sources).
    Never raises for bad bytes: the last resort replaces undecodable bytes with U+FFFD."""
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return DecodedPage(body[len(bom) :].decode(codec, errors="replace"), codec, "bom")
    if not body.isascii():
        try:
            return DecodedPage(body.decode("utf-8"), "utf-8", "utf-8")
        except UnicodeDecodeError:
            pass
    for source, label in (("header", header_charset), ("meta", meta_charset(body))):
        codec = python_codec(label)
        if codec is None or codec.startswith("utf-16"):
            continue  # a UTF-16 declaration on a payload without a BOM is a lie
        try:
            return DecodedPage(body.decode(codec), codec, source)
        except UnicodeDecodeError:
            continue
    # Raw uchardet names: WHATWG remapping turns some (cp949) into its UTF-8 fallback.
    guess = detect_encoding(body, max_len=0, html5_compatible=False, from_html_meta=False)
    detected = python_codec(guess) or "utf-8"
    return DecodedPage(bytes_to_str(body, detected, errors="replace"), detected, "detected")


_TRAILING_SPACE = re.compile(r"[ \t\u00a0]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def extract_main_text(html: str, config: ExtractionConfig = ExtractionConfig()) -> str:
    """The main text of an HTML document: paragraphs separated by a blank line, lines kept,
    navigation and boilerplate dropped, with the extractor `config` names. Returns "" when the
    page has no main content. resiliparse raises HTMLParserException for unparseable HTML."""
    if config.extractor == "trafilatura":
        return _trafilatura_text(html)
    tree = HTMLTree.parse(html)
    text = extract_plain_text(
        tree,
        preserve_formatting=True,
        main_content=config.main_content,
        list_bullets=config.list_bullets,
        alt_texts=config.alt_texts,
        links=config.links,
        form_fields=config.form_fields,
        noscript=config.noscript,
    )
    text = _TRAILING_SPACE.sub("\n", text.replace("\r", ""))
    return _BLANK_RUNS.sub("\n\n", text).strip()


def _trafilatura():
    try:
        import trafilatura
    except ImportError as error:
        raise ImportError(
            "extractor 'trafilatura' needs the trafilatura package: pip install "
            "'lmforge[trafilatura]' (or pip install trafilatura), or use extractor 'resiliparse'"
        ) from error
    return trafilatura


def _trafilatura_text(html: str) -> str:
    # Plain-text output puts each block on one line: blocks become paragraphs (blank line
    # between), while consecutive list items stay together as one block of lines.
    text = _trafilatura().extract(
        html, output_format="txt", include_comments=False, favor_precision=True
    )
    if not text:
        return ""
    out: list[str] = []
    previous = ""
    for line in (raw.strip() for raw in text.replace("\r", "").split("\n")):
        if not line:
            continue
        if out:
            in_list = line.startswith("- ") and previous.startswith("- ")
            out.append("\n" if in_list else "\n\n")
        out.append(line)
        previous = line
    return "".join(out)
