"""The data stage end to end on a small crawl-like WARC: every response is kept or accounted for."""

from __future__ import annotations

import dataclasses
import json
import pickle
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest
from data_stage_fixtures import (
    ARTICLE_DE,
    ARTICLE_JA,
    ARTICLE_RU,
    ARTICLES_EN,
    KEYWORD_STUFFING,
    REPEATED_LINES,
    CorruptingWarcWriter,
    html_page,
)
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.refresh import refresh_dataset, resolve_inputs
from lmforge.tasks.data.dataset_versions import read_documents
from lmforge.tasks.data.dataset_writer import AccountingError
from lmforge.tasks.data.refresh import find_duplicates, write_dataset
from lmforge.tasks.data.warc_processing import process_warc_file
from lmforge.tasks.data.filters import GopherQualityFilter
from lmforge.tasks.data.steps.registry import TEXT_STEPS
from lmforge.tasks.data.warc_writer import WarcWriter

from lmforge.manifest import read_manifest, verify_outputs

DATE = datetime(2025, 3, 14, tzinfo=timezone.utc)
HTML_UTF8 = (("Content-Type", "text/html; charset=utf-8"),)
HTML_NO_CHARSET = (("Content-Type", "text/html"),)
LONG_DOC = ARTICLES_EN["backups"] + ARTICLES_EN["packages"]
MIRROR = LONG_DOC[:3] + LONG_DOC[4:7] + [LONG_DOC[7].replace("vendor", "company")]
CONTACT = "Questions about this page go to maintainer@docs-team.org, who answers within a week."


def write_crawl(directory):
    """Two WARC files; returns {label: response record id} and the number of responses."""
    ids: dict[str, str] = {}
    first = directory / "crawl-00000.warc.gz"
    with CorruptingWarcWriter(first, date=DATE) as warc:
        warc.write_warcinfo()

        def fetch(label, url, body, **kwargs):
            ids[label] = warc.write_fetch(url, body, **kwargs).strip("<>")

        fetch(
            "long",
            "https://docs.example.org/long.html",
            html_page("Backups and packages", LONG_DOC).encode(),
            headers=HTML_UTF8,
        )
        fetch(
            "printing",
            "https://docs.example.org/printing.html",
            html_page("Printing", ARTICLES_EN["printing"] + [CONTACT]).encode(),
            headers=HTML_UTF8,
        )
        fetch(
            "time",
            "https://docs.example.org/time.html",
            html_page("Time", ARTICLES_EN["time"]).encode(),
            headers=HTML_UTF8,
        )
        fetch(
            "de",
            "https://docs.example.org/de/backups.html",
            html_page("Sicherung", ARTICLE_DE, lang="de").encode(),
            headers=HTML_UTF8,
        )
        # Legacy charset declared nowhere: detection must find windows-1251.
        fetch(
            "ru",
            "https://docs.example.org/ru/backups.html",
            html_page("Копии", ARTICLE_RU, lang="ru").encode("windows-1251"),
            headers=HTML_NO_CHARSET,
        )
        fetch(
            "ja",
            "https://docs.example.org/ja/backups.html",
            html_page("バックアップ", ARTICLE_JA, lang="ja").encode("shift_jis"),
            headers=(("Content-Type", "text/html; charset=Shift_JIS"),),
        )
        warc.write_raw(b"\x1f\x8b\x08\x00" + b"this gzip member is damaged" * 4)
        fetch(
            "404",
            "https://docs.example.org/missing.html",
            b"<html><body><h1>Not Found</h1></body></html>",
            status=404,
            reason="Not Found",
        )
        fetch(
            "301",
            "https://docs.example.org/old.html",
            b"",
            status=301,
            reason="Moved Permanently",
            headers=(("Location", "/long.html"),),
        )
        fetch(
            "png",
            "https://docs.example.org/logo.png",
            b"\x89PNG\r\n\x1a\n" + bytes(200),
            headers=(("Content-Type", "image/png"),),
        )
        fetch(
            "robots",
            "https://docs.example.org/robots.txt",
            b"User-agent: *\nDisallow: /private/\n",
            headers=(("Content-Type", "text/plain"),),
        )
        fetch(
            "stuffing",
            "https://spam.example.net/deals.html",
            html_page("Deals", [KEYWORD_STUFFING]).encode(),
            headers=HTML_UTF8,
        )
        fetch(
            "repeated",
            "https://spam.example.net/casino.html",
            html_page("Casino", REPEATED_LINES.split("\n")).encode(),
            headers=HTML_UTF8,
        )
        fetch(
            "nav-only",
            "https://spam.example.net/links.html",
            b"<html><body><nav><a href='/a'>A</a> <a href='/b'>B</a></nav></body></html>",
            headers=HTML_UTF8,
        )
        fetch("exact-copy", "https://docs.example.org/time.html?utm_source=feed",
              html_page("Time", ARTICLES_EN["time"]).encode(), headers=HTML_UTF8)  # fmt: skip
    second = directory / "crawl-00001.warc.gz"
    with WarcWriter(second, date=DATE) as warc:
        warc.write_warcinfo()
        ids["mirror"] = warc.write_fetch(
            "https://mirror.example.net/long.html",
            html_page("Backups and packages", MIRROR, site="Mirror Net").encode(),
            headers=HTML_UTF8,
        ).strip("<>")
    return ids, 15


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    directory = tmp_path_factory.mktemp("crawl")
    ids, responses = write_crawl(directory)
    return directory, ids, responses


@pytest.fixture(scope="module")
def dataset(crawl, tmp_path_factory):
    directory, ids, responses = crawl
    out = tmp_path_factory.mktemp("data") / "data"
    manifest = refresh_dataset([str(directory / "*.warc.gz")], out, DataConfig())
    docs = {row["id"]: row for row in read_documents(out).to_pylist()}
    removed = {
        row["id"]: row
        for row in pq.read_table(out / "removed" / "part-v00001-00000.parquet").to_pylist()
    }
    return out, manifest, docs, removed, ids, responses


def test_every_response_is_kept_or_removed_with_a_reason(dataset):
    out, manifest, docs, removed, ids, responses = dataset
    counts = manifest["counts"]
    assert counts["responses"] == responses == len(ids)
    assert counts["kept"] + counts["removed"] == responses
    assert set(docs) | set(removed) == set(ids.values())
    assert not set(docs) & set(removed)


def test_good_pages_in_every_charset_are_kept_with_language_and_source(dataset):
    _, _, docs, _, ids, _ = dataset
    assert {label for label, i in ids.items() if i in docs} == {
        "long", "printing", "time", "de", "ru", "ja",
    }  # fmt: skip
    assert [docs[ids[label]]["lang"] for label in ("long", "de", "ru", "ja")] == [
        "en", "de", "ru", "ja",
    ]  # fmt: skip
    assert ARTICLE_RU[0] in docs[ids["ru"]]["text"]
    assert docs[ids["ru"]]["charset"] == "cp1251"
    assert ARTICLE_JA[0] in docs[ids["ja"]]["text"]
    long_doc = docs[ids["long"]]
    assert (
        long_doc["source"] == "docs.example.org" and long_doc["warc_file"] == "crawl-00000.warc.gz"
    )
    assert long_doc["text"].split("\n\n")[1:] == LONG_DOC
    assert long_doc["lang_score"] > 0.9


def test_email_addresses_are_redacted_in_kept_text(dataset):
    _, _, docs, _, ids, _ = dataset
    text = docs[ids["printing"]]["text"]
    assert "maintainer@docs-team.org" not in text and "email@example.com" in text


@pytest.mark.parametrize(
    ("label", "stage", "reason"),
    [
        ("404", "read", "http_404"),
        ("301", "read", "http_301"),
        ("png", "html", "binary_payload"),
        ("robots", "html", "not_html"),
        ("nav-only", "extract", "no_main_text"),
        ("stuffing", None, None),
        ("repeated", "gopher_repetition", "duplicate_lines"),
    ],
)
def test_removed_responses_carry_stage_and_reason(dataset, label, stage, reason):
    _, _, _, removed, ids, _ = dataset
    row = removed[ids[label]]
    assert row["stage"] == stage or (stage is None and row["stage"] in TEXT_STEPS)
    assert row["reason"] == reason or (reason is None and row["reason"])
    assert row["duplicate_of"] is None


def test_duplicates_point_at_the_surviving_document(dataset):
    _, manifest, docs, removed, ids, _ = dataset
    exact = removed[ids["exact-copy"]]
    assert (exact["stage"], exact["reason"], exact["duplicate_of"]) == (
        "dedup", "exact_duplicate", ids["time"],
    )  # fmt: skip
    mirror = removed[ids["mirror"]]
    assert (mirror["reason"], mirror["duplicate_of"]) == ("near_duplicate", ids["long"])
    assert mirror["duplicate_of"] in docs
    assert manifest["counts"]["removed_by_reason"]["dedup"] == {
        "exact_duplicate": 1, "near_duplicate": 1,
    }  # fmt: skip


def test_manifest_records_inputs_counts_params_and_the_damaged_record(dataset, crawl):
    out, manifest, _, _, _, _ = dataset
    assert read_manifest(out) == manifest
    verify_outputs(out)
    assert [item["path"].rsplit("/", 1)[1] for item in manifest["inputs"]] == [
        "crawl-00000.warc.gz", "crawl-00001.warc.gz",
    ]  # fmt: skip
    assert all(len(item["sha256"]) == 64 for item in manifest["inputs"])
    counts = manifest["counts"]
    assert (
        counts["read_errors"] == 1
        and manifest["read_errors"][0]["warc_file"] == "crawl-00000.warc.gz"
    )
    assert counts["languages"] == {"en": 3, "de": 1, "ru": 1, "ja": 1}
    assert counts["bytes_out"] == sum(
        len(t.encode()) for t in read_documents(out, ["text"]).column("text").to_pylist()
    )
    assert 0 < counts["bytes_out"] < counts["bytes_in"]
    assert DataConfig.from_dict(manifest["params"]) == DataConfig()


def test_processing_a_file_is_deterministic_and_its_result_picklable(crawl, tmp_path):
    directory, _, _ = crawl
    config = DataConfig()
    first = process_warc_file(directory / "crawl-00000.warc.gz", config, tmp_path / "a")
    second = process_warc_file(directory / "crawl-00000.warc.gz", config, tmp_path / "b")
    assert first.stats == second.stats and first.sha256 == second.sha256
    assert pq.read_table(first.candidates_path) == pq.read_table(second.candidates_path)
    assert pq.read_table(first.removed_path) == pq.read_table(second.removed_path)
    assert pickle.loads(pickle.dumps(first)) == first
    assert first.stats["responses"] == 14 and len(first.stats["read_errors"]) == 1


def test_language_allow_list_removes_other_languages(crawl, tmp_path):
    directory, ids, _ = crawl
    config = DataConfig(languages=("en",))
    result = process_warc_file(directory / "crawl-00000.warc.gz", config, tmp_path)
    removed = {row["id"]: row for row in pq.read_table(result.removed_path).to_pylist()}
    for label in ("de", "ru", "ja"):
        assert (removed[ids[label]]["stage"], removed[ids[label]]["reason"]) == (
            "language", "unwanted_language",
        )  # fmt: skip


def test_write_dataset_refuses_numbers_that_do_not_add_up(crawl, tmp_path):
    directory, _, _ = crawl
    config = DataConfig()
    results = [process_warc_file(p, config, tmp_path / "staging")
               for p in resolve_inputs([directory])]  # fmt: skip
    duplicates = find_duplicates(results, config)
    broken = dataclasses.replace(
        results[0], stats={**results[0].stats, "responses": results[0].stats["responses"] + 1}
    )
    out = tmp_path / "data"
    with pytest.raises(AccountingError, match="vanished"):
        write_dataset([broken, results[1]], duplicates, out, config)
    assert not out.exists()
    manifest = write_dataset(results, duplicates, out, config)
    assert manifest["counts"]["kept"] + manifest["counts"]["removed"] == 15


def test_resolve_inputs_expands_globs_and_directories_sorted_and_unique(crawl):
    directory, _, _ = crawl
    expected = [directory / "crawl-00000.warc.gz", directory / "crawl-00001.warc.gz"]
    assert resolve_inputs([str(directory / "*.warc.gz")]) == expected
    assert resolve_inputs([directory, str(directory / "crawl-00001.warc.gz")]) == expected


def test_resolve_inputs_names_a_pattern_that_matches_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        resolve_inputs([str(tmp_path / "nothing-here" / "*.warc.gz")])


def test_resolve_inputs_refuses_two_files_with_one_name(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.warc.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="same.warc.gz"):
        resolve_inputs([str(tmp_path / "*" / "*.warc.gz")])


def test_config_survives_a_json_round_trip_and_rejects_bad_values():
    config = DataConfig(languages=("EN", "de"), gopher_quality=GopherQualityFilter(min_words=20),
                        c4_quality=None)  # fmt: skip
    restored = DataConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and restored.languages == ("de", "en")
    assert [step.name for step in restored.text_steps()] == [
        "gopher_repetition", "gopher_quality", "fineweb_quality", "pii",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="min_lang_score"):
        DataConfig(min_lang_score=1.5)
    with pytest.raises(TypeError, match="colour"):
        DataConfig.from_dict({"colour": "blue"})


def test_a_changed_filter_threshold_reaches_the_config_and_the_manifest(crawl, tmp_path):
    directory, _, _ = crawl
    config = DataConfig.model_validate({"gopher_quality": {"min_words": 7}})
    assert config.gopher_quality.min_words == 7 and config != DataConfig()
    manifest = refresh_dataset([str(directory / "*.warc.gz")], tmp_path / "data", config)
    assert manifest["params"]["gopher_quality"]["min_words"] == 7
    assert DataConfig.from_dict(manifest["params"]) == config


def test_invalid_data_settings_are_refused_naming_the_field():
    for values, field in [({"min_lang_score": 1.5}, "min_lang_score"),
                          ({"gopher_quality": {"min_words": -1}}, "gopher_quality.min_words"),
                          ({"minhash": {"threshold": 0}}, "minhash.threshold"),
                          ({"gopher_quality": {"min_wordz": 3}}, "gopher_quality.min_wordz"),
                          ({"min_lang_scores": {"ja": 2.0}}, "min_lang_scores")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"(?m)^{field}\b"):
            DataConfig.model_validate(values)
    with pytest.raises(ValueError, match="num_perm must equal bands x rows"):
        DataConfig.model_validate({"minhash": {"bands": 10}})
