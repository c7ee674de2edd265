"""The language a page declares (header, <html lang>, URL locale) and dedup by declared language:
a page's shingle family decides which documents it is compared with, in both dedup stages."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest
from data_stage_fixtures import ARTICLES_EN, html_page
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.refresh import refresh_dataset
from lmforge.tasks.data.dataset_versions import read_documents
from lmforge.tasks.data.declared_language import (
    declared_language,
    html_lang,
    language_of_tag,
    url_language,
)
from lmforge.tasks.data.dedup import DedupDocument, MinHashConfig, find_duplicates
from lmforge.tasks.data.dedup_index import load_index
from lmforge.tasks.data.warc_writer import WarcWriter

from lmforge.manifest import read_manifest


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://debian-handbook.info/browse/ko-KR/stable/sect.apt-file.html", "ko"),
        ("https://example.org/docs/zh_CN/guide/index.html", "zh"),
        ("https://example.org/manuals/zh-Hant/intro.html", "zh"),
        ("https://manpages.example.org/bookworm/manpages-ja/regex.7.ja.html", "ja"),
        ("https://www.example.org/doc/manuals/reference/ch05.zh-tw.html", "zh"),
        ("https://www.example.org/index.html.th", "th"),
        ("https://docs.example.org/ja/3.11/library/os.html", "ja"),
        ("https://example.org/search?q=x&hl=th", "th"),
        ("https://example.org/page?lang=pt-BR", "pt"),
        ("https://docs.example.org/3.11/library/os.html", None),
        ("https://example.org/js/app.html", None),  # `js` is no language
        ("https://example.org/ko", None),  # a bare code names a section only above a page
        ("https://example.org/xx-YY/page.html", None),  # not an ISO 639-1 code
        ("https://example.org/assets/app.min.html", None),
    ],
)
def test_url_locales(url, expected):
    assert url_language(url) == expected


def test_language_tags_and_html_attributes():
    assert language_of_tag("ko-KR") == "ko"
    assert language_of_tag(" ZH_cn ") == "zh"
    assert language_of_tag("en, de") is None  # several languages declare none in particular
    assert language_of_tag("") is None and language_of_tag(None) is None
    assert language_of_tag("klingon") is None
    assert html_lang('<!DOCTYPE html><html class="x" lang="ja-JP"><body>') == "ja"
    assert html_lang('<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="ko">') == "ko"
    assert html_lang("<html><body lang='fr'>") is None  # only the document element declares
    assert html_lang("<p>no html element</p>") is None


def test_the_most_explicit_declaration_wins():
    url = "https://example.org/ko-KR/page.html"
    page = '<html lang="ja"><body>'
    assert declared_language(url, page, "th") == "th"
    assert declared_language(url, page, None) == "ja"
    assert declared_language(url, page, "en, de") == "ja"
    assert declared_language(url, "<html><body>", None) == "ko"
    assert declared_language("https://example.org/page.html", None, None) is None


def test_shingle_language_follows_the_setting():
    assert MinHashConfig().shingle_language_of("en", "ko") == "en"
    declared = MinHashConfig(shingle_language="declared")
    assert declared.shingle_language_of("en", "ko") == "ko"
    assert declared.shingle_language_of("en", None) == "en"
    with pytest.raises(ValueError, match=r"(?m)^shingle_language\n.*'detected' or 'declared'"):
        MinHashConfig(shingle_language="url")


TEXT = " ".join(ARTICLES_EN["backups"] + ARTICLES_EN["packages"])


def test_identical_texts_in_different_shingle_families_are_not_duplicates():
    """Exact matching stays inside a shingle family, as near matching does by construction:
    an English text shingled as Korean is compared with Korean-shingled pages only."""
    documents = [
        DedupDocument("en-US", TEXT, "en", "a"),
        DedupDocument("ko-KR", TEXT, "ko", "a"),
        DedupDocument("zh-CN", TEXT, "zh", "a"),
        DedupDocument("de-DE", TEXT, "de", "a"),
    ]
    report = find_duplicates(documents)
    assert {(d.id, d.duplicate_of, d.reason) for d in report.duplicates} == {
        ("zh-CN", "ko-KR", "exact_duplicate"),
        ("de-DE", "en-US", "exact_duplicate"),
    }


DATE = datetime(2025, 3, 14, tzinfo=timezone.utc)
PAGE = html_page("Backups", ARTICLES_EN["backups"] + ARTICLES_EN["packages"])


@pytest.fixture(scope="module")
def localised_crawl(tmp_path_factory):
    """One English page served under an English and a Korean locale (its `<html lang>` and URL
    say `ko`), and a plain copy of the English one."""
    path = tmp_path_factory.mktemp("localised") / "crawl-00000.warc.gz"
    ids = {}
    headers = (("Content-Type", "text/html; charset=utf-8"),)
    pages = {
        "en": ("https://handbook.example.org/en-US/backups.html", PAGE),
        "ko": ("https://handbook.example.org/ko-KR/backups.html",
               PAGE.replace('<html lang="en">', "<html>")),
        "copy": ("https://handbook.example.org/en-US/backups.html?utm_source=feed", PAGE),
    }  # fmt: skip
    with WarcWriter(path, date=DATE) as warc:
        warc.write_warcinfo()
        for label, (url, body) in pages.items():
            ids[label] = warc.write_fetch(url, body.encode(), headers=headers).strip("<>")
    return path, ids


def kept_and_removed(out):
    kept = set(read_documents(out, ["id"]).column("id").to_pylist())
    removed = {row["id"]: row["duplicate_of"]
               for path in sorted((out / "removed").glob("*.parquet"))
               for row in pq.read_table(path).to_pylist() if row["stage"] == "dedup"}  # fmt: skip
    return kept, removed


def test_a_refresh_dedups_by_the_language_pages_declare_when_asked(localised_crawl, tmp_path):
    warc, ids = localised_crawl
    detected = tmp_path / "detected"
    refresh_dataset([warc], detected)
    kept, removed = kept_and_removed(detected)
    assert kept == {ids["en"]}
    assert removed == {ids["ko"]: ids["en"], ids["copy"]: ids["en"]}

    config = DataConfig(minhash=MinHashConfig(shingle_language="declared"))
    declared = tmp_path / "declared"
    refresh_dataset([warc], declared, config)
    kept, removed = kept_and_removed(declared)
    assert kept == {ids["en"], ids["ko"]}
    assert removed == {ids["copy"]: ids["en"]}
    documents = read_documents(declared, ["id", "lang", "declared_lang"]).to_pylist()
    assert {(d["id"], d["lang"], d["declared_lang"]) for d in documents} == {
        (ids["en"], "en", "en"), (ids["ko"], "en", "ko")
    }
    assert read_manifest(declared)["params"]["minhash"]["shingle_language"] == "declared"

    # The index records how each kept page was shingled; a rebuilt one says the same.
    index = load_index(declared, config.minhash)
    shutil.rmtree(declared / "index")
    rebuilt = load_index(declared, config.minhash)
    assert (rebuilt.keys == index.keys).all() and (rebuilt.bands == index.bands).all()


def test_an_index_of_another_format_is_not_used(localised_crawl, tmp_path, monkeypatch):
    from lmforge.tasks.data import dedup_index

    warc, _ = localised_crawl
    refresh_dataset([warc], tmp_path / "data")
    minhash = DataConfig().minhash
    assert dedup_index.index_is_usable(tmp_path / "data", minhash)
    monkeypatch.setattr(dedup_index, "INDEX_FORMAT", dedup_index.INDEX_FORMAT + 1)
    assert not dedup_index.index_is_usable(tmp_path / "data", minhash)


def test_the_shingle_language_is_a_field_of_the_data_config():
    config = DataConfig.model_validate({"minhash": {"shingle_language": "declared"}})
    assert config.minhash.shingle_language == "declared"
    assert DataConfig().minhash == MinHashConfig()


def test_a_dataset_from_before_declared_languages_is_continued(localised_crawl, tmp_path):
    """Parts written before `declared_lang` existed read as null, and a refresh continues the
    dataset (deduplicating against its documents) instead of failing on the new column."""
    import pyarrow as pa

    warc, ids = localised_crawl
    out = tmp_path / "data"
    refresh_dataset([warc], out)
    for part in (out / "docs").rglob("*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop_columns(["declared_lang"]), part)
    second = tmp_path / "crawl-00001.warc.gz"
    with WarcWriter(second, date=DATE) as warc_file:
        warc_file.write_warcinfo()
        headers = (("Content-Type", "text/html"),)
        copy = warc_file.write_fetch("https://other.example.org/backups.html", PAGE.encode(),
                                     headers=headers).strip("<>")  # fmt: skip
        new = warc_file.write_fetch("https://other.example.org/time.html",
                                    html_page("Time", ARTICLES_EN["time"]).encode(),
                                    headers=headers).strip("<>")  # fmt: skip
    shutil.rmtree(out / "index")  # rebuilt from parts with and without the column
    refresh_dataset([second], out)
    documents = read_documents(out, ["id", "declared_lang"])
    assert documents.schema.field("declared_lang").type == pa.string()
    assert dict(zip(*documents.to_pydict().values())) == {ids["en"]: None, new: "en"}
    assert sorted(read_documents(out).column("id").to_pylist()) == sorted([ids["en"], new])
    assert kept_and_removed(out)[1][copy] == ids["en"]
