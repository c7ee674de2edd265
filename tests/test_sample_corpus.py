"""The built-in sample corpus: real documentation text in WARC files, with a crawl's noise."""

from __future__ import annotations

import ast
import difflib
import html
import io
import re
import subprocess
import sys
import sysconfig
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastwarc import ArchiveIterator, WarcRecordType

from lmforge.tasks.data.sample import corpus as sample_corpus
from lmforge.tasks.data.sample.corpus import (
    DOCS_HOST,
    JUNK_PAGES,
    LEGACY_HOST,
    MIRROR_HOST,
    SPAM_HOSTS,
    build_sample_corpus,
)

TINY = 16  # documentation pages in the corpus most tests read


@dataclass(frozen=True)
class Response:
    url: str
    status: int
    content_type: str
    location: str | None
    body: bytes


def read_responses(paths: list[Path]) -> list[Response]:
    responses = []
    for path in paths:
        with open(path, "rb") as stream:
            for record in ArchiveIterator(stream, record_types=WarcRecordType.response):
                responses.append(
                    Response(
                        url=record.headers.get("WARC-Target-URI"),
                        status=record.http_headers.status_code,
                        content_type=record.http_headers.get("Content-Type"),
                        location=record.http_headers.get("Location"),
                        body=record.reader.read(),
                    )
                )
    return responses


def visible_text(page: str) -> str:
    """The page's text with tags dropped and whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def plain_paragraphs(text: str) -> list[str]:
    """Paragraphs of prose without markup that rendering would change (code, roles, bullets)."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        paragraph = textwrap.dedent(paragraph.strip("\n"))
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if (
            lines
            and not any(line[0].isspace() for line in lines)
            and not re.search(r"`|::|>>>|^([-•+*] |[=*~^-]{3})", paragraph, re.MULTILINE)
            and len(paragraph) >= 40
        ):
            paragraphs.append(" ".join(paragraph.split()))
    return paragraphs


def source_docstrings(library_path: str) -> str:
    """Every docstring of the stdlib source behind `/3/library/<module>[.<Class>].html`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = library_path.rsplit("/", 1)[1].removesuffix(".html").split(".")
    for end in range(len(parts), 0, -1):
        for candidate in (root.joinpath(*parts[:end]).with_suffix(".py"),
                          root.joinpath(*parts[:end], "__init__.py")):  # fmt: skip
            if candidate.is_file():
                tree = ast.parse(candidate.read_bytes())
                return "\n\n".join(
                    ast.get_docstring(node) or ""
                    for node in ast.walk(tree)
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                )
    raise AssertionError(f"no stdlib source for {library_path}")


def matched_words(source: list[str], edited: list[str]) -> int:
    matcher = difflib.SequenceMatcher(None, source, edited, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks())


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> list[Path]:
    return build_sample_corpus(tmp_path_factory.mktemp("sample"), max_pages=TINY, seed=0)


@pytest.fixture(scope="module")
def responses(tiny_corpus) -> list[Response]:
    return read_responses(tiny_corpus)


def test_same_arguments_give_byte_identical_files(tmp_path, tiny_corpus):
    again = build_sample_corpus(tmp_path / "again", max_pages=TINY, seed=0)
    assert [path.name for path in again] == ["sample-00000.warc.gz", "sample-00001.warc.gz"]
    assert [path.read_bytes() for path in again] == [path.read_bytes() for path in tiny_corpus]
    other_seed = build_sample_corpus(tmp_path / "other", max_pages=TINY, seed=1)
    assert [path.read_bytes() for path in other_seed] != [path.read_bytes() for path in again]


def test_files_each_start_with_warcinfo_and_share_the_fetches(tmp_path):
    paths = build_sample_corpus(tmp_path, n_files=3, max_pages=TINY)
    assert [path.name for path in paths] == [f"sample-0000{i}.warc.gz" for i in range(3)]
    per_file = []
    for path in paths:
        with open(path, "rb") as stream:
            types = [record.record_type for record in ArchiveIterator(stream, parse_http=False)]
        assert types[0] == WarcRecordType.warcinfo
        per_file.append(types.count(WarcRecordType.response))
    assert max(per_file) - min(per_file) <= 1 and min(per_file) > 0


def test_max_pages_caps_the_documentation_pages(responses):
    main_site = [r for r in responses if r.url.startswith(f"https://{DOCS_HOST}/3/")]
    originals = [r for r in main_site if r.status == 200 and "?" not in r.url]
    legacy_only = [r for r in responses if r.url.startswith(f"http://{LEGACY_HOST}/doku/")]
    assert len(originals) + len(legacy_only) == TINY


def test_crawl_mix_has_statuses_and_content_types_beyond_html(responses):
    statuses = Counter(r.status for r in responses)
    assert statuses[200] > 0 and statuses[301] > 0 and statuses[404] > 0
    kinds = Counter(r.content_type.split(";")[0] for r in responses)
    assert kinds["text/html"] > 0 and kinds["image/png"] > 0
    robots = [r for r in responses if r.url.endswith("/robots.txt")]
    assert {r.url.split("/")[2] for r in robots} == {
        DOCS_HOST, MIRROR_HOST, LEGACY_HOST, *SPAM_HOSTS,
    }  # fmt: skip
    assert all(r.content_type.startswith("text/plain") for r in robots)
    assert all(b"User-agent: *" in r.body for r in robots)


def test_images_are_valid_png_files(responses):
    images = [r for r in responses if r.content_type == "image/png"]
    assert images and all(r.body.startswith(b"\x89PNG\r\n\x1a\n") for r in images)
    pil = pytest.importorskip("PIL.Image")
    for response in images:
        picture = pil.open(io.BytesIO(response.body))
        picture.load()  # decodes the pixels: checks the chunks' CRCs and the zlib stream
        assert picture.size == (48, 32)


def test_redirects_point_at_pages_in_the_crawl(responses):
    served = {r.url for r in responses if r.status == 200}
    redirects = [r for r in responses if r.status == 301]
    assert redirects and all(r.location in served for r in redirects)
    assert all(r.location.encode() in r.body for r in redirects)


def test_exact_duplicates_repeat_a_page_byte_for_byte_at_a_tracking_url(responses):
    bodies = {r.url: r.body for r in responses}
    duplicates = [r for r in responses if r.url.endswith("?utm_source=feed")]
    assert duplicates
    for duplicate in duplicates:
        assert duplicate.body == bodies[duplicate.url.removesuffix("?utm_source=feed")]


def test_near_duplicates_lose_one_paragraph_and_change_a_few_words(responses):
    bodies = {
        r.url: r.body.decode("utf-8")
        for r in responses
        if r.url.startswith("https://") and r.content_type.startswith("text/html")
    }
    mirrors = [url for url in bodies if url.startswith(f"https://{MIRROR_HOST}/python3/")]
    assert mirrors
    for url in mirrors:
        original = bodies[f"https://{DOCS_HOST}/3/" + url.split("/python3/", 1)[1]]
        assert bodies[url] != original
        article = original.split('<article class="document">')[1].split("</article>")[0]
        mirror_body = bodies[url].split('<div class="doc-body">')[1].split('id="right-column"')[0]
        paragraphs = re.findall(r"<p>(.*?)</p>", article, re.DOTALL)
        mirrored = re.findall(r"<p>(.*?)</p>", mirror_body, re.DOTALL)
        assert len(mirrored) == len(paragraphs) - 1
        edited = [paragraph for paragraph in mirrored if paragraph not in paragraphs]
        assert 1 <= len(edited) <= 3
        for paragraph in edited:
            # Its source is the original paragraph it shares the most words with, in order.
            missing = min(
                len(source.split()) - matched_words(source.split(), paragraph.split())
                for source in paragraphs
            )
            assert 1 <= missing <= 3, "a few words change, the rest of the paragraph stays"


def test_junk_pages_of_every_kind_come_from_spam_hosts(responses):
    junk = [r for r in responses if r.url.split("/")[2] in SPAM_HOSTS and "robots" not in r.url]
    kinds = {re.sub(r"-\d+\.html$", "", r.url.rsplit("/", 1)[1]) for r in junk}
    assert kinds == set(JUNK_PAGES)
    texts = {
        re.sub(r"-\d+\.html$", "", r.url.rsplit("/", 1)[1]): visible_text(r.body.decode())
        for r in junk
    }
    stuffed = texts["keyword-stuffing"].split()
    assert len(stuffed) > 300 and len(set(stuffed)) < 40
    assert len(texts["too-short"].split()) < 25
    assert texts["bullet-spam"].count("•") >= 40


def test_documentation_pages_have_site_structure(responses):
    pages = [r.body.decode() for r in responses if r.url.startswith(f"https://{DOCS_HOST}/3/")]
    assert pages
    for page in pages:
        for tag in ("<header", "<nav", "<main", "<h1>", "<p>", "<footer"):
            assert tag in page
    assert any("<pre>" in page for page in pages)


def test_library_pages_carry_real_docstring_text(responses):
    library = [r for r in responses if r.url.startswith(f"https://{DOCS_HOST}/3/library/")]
    assert len(library) >= 3
    for response in library:
        text = visible_text(response.body.decode())
        paragraphs = plain_paragraphs(source_docstrings(response.url.split("?")[0]))
        assert any(paragraph in text for paragraph in paragraphs), response.url


def test_reference_pages_carry_the_interpreters_topic_text(responses):
    from pydoc_data.topics import topics

    reference = [r for r in responses if r.url.startswith(f"https://{DOCS_HOST}/3/reference/")]
    assert len(reference) >= 3
    for response in reference:
        key = response.url.split("?")[0].rsplit("/", 1)[1].removesuffix(".html")
        text = visible_text(response.body.decode())
        assert any(paragraph in text for paragraph in plain_paragraphs(topics[key])), key


def test_legacy_pages_decode_with_the_charset_they_declare(responses):
    legacy = [r for r in responses if r.url.startswith(f"http://{LEGACY_HOST}/doku/")]
    in_header = [r for r in legacy if "charset=" in r.content_type]
    in_meta_only = [r for r in legacy if r.content_type == "text/html"]
    assert len(in_meta_only) == 1 and in_header
    assert all(r.content_type == "text/html; charset=windows-1252" for r in in_header)
    for response in in_header:
        with pytest.raises(UnicodeDecodeError):
            response.body.decode("utf-8")
        page = response.body.decode("windows-1252")
        assert "Référence · Übersicht" in page
        # Only documentation with typographic quotes or dashes goes to the legacy mirror.
        assert any(mark in page for mark in "“”’–")
    meta_page = in_meta_only[0].body
    assert b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1">' in meta_page
    with pytest.raises(UnicodeDecodeError):
        meta_page.decode("utf-8")
    assert "Gästebuch" in meta_page.decode("iso-8859-1")


def test_legacy_pages_keep_the_documentation_text(responses):
    from pydoc_data.topics import topics

    legacy = [r for r in responses if r.url.startswith(f"http://{LEGACY_HOST}/doku/reference/")]
    header_declared = [r for r in legacy if "charset=" in r.content_type]
    assert header_declared
    for response in header_declared:
        key = response.url.rsplit("/", 1)[1].removesuffix(".html")
        text = visible_text(response.body.decode("windows-1252"))
        assert any(paragraph in text for paragraph in plain_paragraphs(topics[key])), key


def test_rebuilding_replaces_files_and_removes_leftovers_of_a_larger_build(tmp_path):
    (tmp_path / "notes.txt").write_text("kept")
    build_sample_corpus(tmp_path, n_files=4, max_pages=8)
    build_sample_corpus(tmp_path, n_files=2, max_pages=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "sample-00000.warc.gz", "sample-00001.warc.gz",
    ]  # fmt: skip


def test_a_failed_build_leaves_no_partial_files(tmp_path, monkeypatch):
    first = build_sample_corpus(tmp_path, max_pages=8)
    before = {path.name: path.read_bytes() for path in first}
    calls = []

    def failing_write_fetch(self, url, body, **kwargs):
        calls.append(url)
        if len(calls) == 5:
            raise OSError("disk full")
        return original_write_fetch(self, url, body, **kwargs)

    original_write_fetch = sample_corpus.WarcWriter.write_fetch
    monkeypatch.setattr(sample_corpus.WarcWriter, "write_fetch", failing_write_fetch)
    with pytest.raises(OSError, match="disk full"):
        build_sample_corpus(tmp_path, max_pages=8, seed=7)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_invalid_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_files"):
        build_sample_corpus(tmp_path, n_files=0)
    with pytest.raises(ValueError, match="max_pages"):
        build_sample_corpus(tmp_path, max_pages=0)


@pytest.mark.slow
def test_default_corpus_has_demo_size_and_imports_no_stdlib_module(tmp_path):
    # In a fresh interpreter: the build reads sources and must not import what it documents
    # (only the topics dict, codecs and sysconfig's data may be loaded on the way).
    script = textwrap.dedent(
        f"""
        import sys
        from lmforge.tasks.data.sample.corpus import build_sample_corpus
        before = set(sys.modules)
        paths = build_sample_corpus({str(tmp_path)!r})
        allowed = ("pydoc_data", "encodings.", "_sysconfigdata")
        print(sorted(m for m in set(sys.modules) - before if not m.startswith(allowed)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
    responses = read_responses(sorted(tmp_path.glob("sample-*.warc.gz")))
    assert 400 <= len(responses) <= 700
    html_bytes = sum(len(r.body) for r in responses if r.content_type.startswith("text/html"))
    assert 2_000_000 <= html_bytes <= 8_000_000
