"""Deciding HTML, decoding charsets and extracting the main text."""

from __future__ import annotations

import sys

import pytest
from data_stage_fixtures import (
    ARTICLE_DE,
    ARTICLE_JA,
    ARTICLE_RU,
    ARTICLE_ZH,
    ARTICLE_ZH_TW,
    ARTICLES_EN,
    html_page,
)
from lmforge.tasks.data.html_text import (
    ExtractionConfig,
    decode_page,
    extract_main_text,
    html_rejection,
    meta_charset,
    python_codec,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
ROBOTS = b"User-agent: *\nDisallow: /private/\n"
PAGE = html_page("Backups", ARTICLES_EN["backups"]).encode()


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("text/html", PAGE, None),
        ("application/xhtml+xml", PAGE, None),
        (None, PAGE, None),  # no header: the payload opens like HTML
        ("text/plain", PAGE, None),  # mislabelled HTML is still HTML
        ("image/png", PNG, "binary_payload"),
        ("text/html", PNG, "binary_payload"),  # an image served as HTML
        ("text/plain", ROBOTS, "not_html"),
        ("text/html", ROBOTS, "not_html"),  # declared HTML without any markup
        ("application/json", b'{"a": 1}', "not_html"),
        ("text/html", b"   \n", "empty_payload"),
    ],
)
def test_html_is_decided_from_the_declared_type_and_the_payload(content_type, body, expected):
    assert html_rejection(content_type, body) == expected


@pytest.mark.parametrize(
    ("charset", "paragraphs"),
    [
        ("windows-1251", ARTICLE_RU),
        ("koi8-r", ARTICLE_RU),
        ("shift_jis", ARTICLE_JA),
        ("euc-jp", ARTICLE_JA),
        ("gb18030", ARTICLE_ZH),
        ("big5", ARTICLE_ZH_TW),
        ("iso-8859-1", ARTICLE_DE),
    ],
)
def test_legacy_charset_without_any_declaration_decodes_to_the_right_text(charset, paragraphs):
    html = html_page("t", paragraphs)
    page = decode_page(html.encode(charset), header_charset=None)
    assert page.html == html
    assert page.source == "detected"


def test_header_charset_is_used_before_the_meta_tag():
    html = html_page("t", ARTICLE_RU, charset_meta="koi8-r")
    page = decode_page(html.encode("windows-1251"), header_charset="windows-1251")
    assert page.html == html and page.source == "header"


def test_meta_charset_is_used_when_the_header_has_none():
    html = html_page("t", ARTICLE_RU, charset_meta="koi8-r")
    page = decode_page(html.encode("koi8-r"))
    assert page.html == html and page.source == "meta"
    assert meta_charset(html.encode("koi8-r")) == "koi8-r"


def test_valid_utf8_wins_over_a_wrong_legacy_declaration():
    html = html_page("t", ARTICLE_DE)
    page = decode_page(html.encode("utf-8"), header_charset="iso-8859-1")
    assert page.html == html and page.encoding == "utf-8"


def test_a_declared_charset_that_does_not_fit_the_bytes_is_skipped():
    html = html_page("t", ARTICLE_JA)
    page = decode_page(html.encode("euc-jp"), header_charset="shift_jis")
    assert page.html == html


def test_byte_order_mark_decides_the_encoding():
    html = html_page("t", ARTICLE_ZH)
    page = decode_page(html.encode("utf-16"), header_charset="gb18030")
    assert page.html == html and page.source == "bom"


def test_charset_labels_map_to_the_codecs_browsers_use():
    assert python_codec("Shift_JIS") == "cp932"
    assert python_codec("latin1") == "cp1252"
    assert python_codec("x-no-such-charset") is None


def test_main_text_keeps_paragraphs_and_drops_navigation_and_footer():
    text = extract_main_text(html_page("Backups", ARTICLES_EN["backups"]))

    paragraphs = text.split("\n\n")
    assert paragraphs[0] == "Backups"
    assert paragraphs[1:] == ARTICLES_EN["backups"]
    assert "Contact" not in text and "Home" not in text


def test_main_text_of_a_page_without_content_is_empty():
    assert extract_main_text("<html><body><nav><a href='/'>Home</a></nav></body></html>") == ""


def test_extraction_options_are_honoured():
    html = "<html><body><main><ul><li>first item</li><li>second item</li></ul></main></body></html>"
    with_bullets = extract_main_text(html, ExtractionConfig(main_content=False))
    without = extract_main_text(html, ExtractionConfig(main_content=False, list_bullets=False))
    assert "• first item" in with_bullets
    assert "•" not in without and "first item" in without


def test_trafilatura_extraction_keeps_paragraph_breaks_and_list_lines():
    pytest.importorskip("trafilatura")
    html = html_page("Backups", ARTICLES_EN["backups"][:3]).replace(
        "</article>", "<ul><li>first item of the list</li><li>second item</li></ul></article>"
    )
    text = extract_main_text(html, ExtractionConfig(extractor="trafilatura"))
    blocks = text.split("\n\n")
    assert blocks[1:4] == ARTICLES_EN["backups"][:3]
    assert blocks[-1] == "- first item of the list\n- second item"
    assert "Contact | Privacy" not in text and "Home" not in text


def test_an_unknown_extractor_is_a_clear_error():
    with pytest.raises(ValueError, match=r"extractor\n.*'resiliparse' or 'trafilatura'"):
        ExtractionConfig(extractor="boilerpipe")


def test_choosing_trafilatura_without_it_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"lmforge\[trafilatura\]"):
        ExtractionConfig(extractor="trafilatura")
