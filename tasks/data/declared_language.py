"""The language a page is published under, as its server, its markup or its URL declare it.

Detected language (fastText on the text) says what the text is written in; the declared one says
which edition of a site the page belongs to - an English page left untranslated in a Korean
manual declares `ko`. Dedup can use it to decide how a page is shingled (`MinHashConfig.
shingle_language`). Sources, most explicit first:

1. the HTTP `Content-Language` header, when it names one language;
2. the `lang` (or `xml:lang`) attribute of the `<html>` element;
3. a locale in the URL: a path segment that is a language-region tag (`/ko-KR/`, `/zh_CN/`),
   a bare language code as the first path segment (`/ja/3.11/`), a language before the file
   extension (`regex.7.ja.html`, `ch05.zh-tw.html`, Apache's `index.html.ja`), or a `lang` /
   `hl` / `locale` query parameter.

Only codes in ISO 639-1 count (`ko-KR` -> `ko`); anything else is no declaration. Hosts are not
read: two-letter subdomains are as often words (`my.`, `go.`) as languages.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import parse_qsl, unquote, urlsplit

from lmforge.tasks.data.language_id import iso639_1_codes

_HTML_TAG = re.compile(r"<html\b[^>]*>", re.IGNORECASE)
_LANG_ATTRIBUTE = re.compile(
    r"""\b(?:xml:)?lang\s*=\s*["']?\s*([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*)""", re.IGNORECASE
)
# `ko-KR`, `zh_CN`, `zh-Hant`, `pt-br`: a language with a region or script subtag.
_REGION_TAG = re.compile(r"^([a-z]{2})[-_](?:[a-z]{2}|[a-z]{4}|\d{3})$", re.IGNORECASE)
_BARE_CODE = re.compile(r"^[a-z]{2}$", re.IGNORECASE)
# `name.ja.html`, `name.zh-tw.htm`, `name.html.ja`
_FILE_LANGUAGE = re.compile(
    r"\.([a-z]{2})(?:[-_][a-z]{2,4})?\.(?:html?|xhtml|php|aspx?)$|\.(?:html?|xhtml)\.([a-z]{2})$",
    re.IGNORECASE,
)
_QUERY_KEYS = frozenset({"lang", "hl", "locale", "language"})
HTML_HEAD_CHARS = 4096  # the <html> element opens the document: no need to scan further


@functools.cache
def two_letter_codes() -> frozenset[str]:
    """The ISO 639-1 codes: the two-letter targets of language ID's ISO 639 table."""
    return frozenset(code for code in iso639_1_codes().values() if len(code) == 2)


def language_of_tag(tag: str | None) -> str | None:
    """`ko-KR` -> `ko`, `ZH_cn` -> `zh`; None for an empty, multi-language or unknown tag."""
    if not tag:
        return None
    tag = tag.strip()
    if "," in tag or " " in tag:
        return None  # `en, de`: the page declares several languages, so none in particular
    primary = re.split(r"[-_]", tag, maxsplit=1)[0].lower()
    return primary if primary in two_letter_codes() else None


def html_lang(html: str) -> str | None:
    """The language the `<html>` element's `lang` / `xml:lang` attribute declares, if any."""
    element = _HTML_TAG.search(html[:HTML_HEAD_CHARS])
    if element is None:
        return None
    attribute = _LANG_ATTRIBUTE.search(element.group(0))
    return language_of_tag(attribute.group(1)) if attribute else None


def url_language(url: str) -> str | None:
    """The language a locale in the URL declares (see the module docstring), or None."""
    parts = urlsplit(url)
    for key, value in parse_qsl(parts.query):
        if key.lower() in _QUERY_KEYS and (lang := language_of_tag(value)):
            return lang
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if segments:
        match = _FILE_LANGUAGE.search(segments[-1])
        if match and (lang := language_of_tag(match.group(1) or match.group(2))):
            return lang
    for segment in segments[:-1] if segments else []:
        if _REGION_TAG.match(segment) and (lang := language_of_tag(segment)):
            return lang
    if len(segments) > 1 and _BARE_CODE.match(segments[0]):
        return language_of_tag(segments[0])
    return None


def declared_language(
    url: str, html: str | None = None, content_language: str | None = None
) -> str | None:
    """The ISO 639-1 code the page is published under (header, then markup, then URL), or None
    when nothing declares one."""
    return (
        language_of_tag(content_language)
        or (html_lang(html) if html else None)
        or url_language(url)
    )
