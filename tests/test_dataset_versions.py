"""Refreshing a data directory adds versions: a ledger skips files seen before, new documents
are deduplicated against everything kept before, and the result equals a run from scratch."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest
from data_stage_fixtures import ARTICLE_DE, ARTICLES_EN, html_page
from lmforge.tasks.data import dataset_writer
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.refresh import refresh_dataset
from lmforge.tasks.data.dataset_versions import (
    dataset_doc_files,
    ledger,
    partition_language,
    read_documents,
    unprocessed_inputs,
)
from lmforge.tasks.data.dedup_index import load_index
from lmforge.tasks.data.warc_writer import WarcWriter

from lmforge.manifest import read_manifest, sha256_file, verify_outputs

DATE = datetime(2025, 3, 14, tzinfo=timezone.utc)
HTML = (("Content-Type", "text/html; charset=utf-8"),)
LONG_DOC = ARTICLES_EN["backups"] + ARTICLES_EN["packages"]
MIRROR = LONG_DOC[:3] + LONG_DOC[4:7] + [LONG_DOC[7].replace("vendor", "company")]


def write_warc(path, pages):
    """One WARC file of `pages` ({label: (url, html)}); returns {label: record id}."""
    ids = {}
    with WarcWriter(path, date=DATE) as warc:
        warc.write_warcinfo()
        for label, (url, body) in pages.items():
            ids[label] = warc.write_fetch(url, body.encode(), headers=HTML).strip("<>")
    return ids


@pytest.fixture(scope="module")
def crawls(tmp_path_factory):
    """Crawl A (an older file) and crawl B (a newer one holding copies of A's pages)."""
    directory = tmp_path_factory.mktemp("crawls")
    a = directory / "crawl-00000.warc.gz"
    b = directory / "crawl-00001.warc.gz"
    ids = write_warc(a, {
        "long": ("https://docs.example.org/long.html", html_page("Backups", LONG_DOC)),
        "time": ("https://docs.example.org/time.html", html_page("Time", ARTICLES_EN["time"])),
        "printing": ("https://docs.example.org/printing.html",
                     html_page("Printing", ARTICLES_EN["printing"])),
    })  # fmt: skip
    ids |= write_warc(b, {
        "mirror": ("https://mirror.example.net/long.html",
                   html_page("Backups", MIRROR, site="Mirror Net")),
        "time-copy": ("https://docs.example.org/time.html?utm_source=feed",
                      html_page("Time", ARTICLES_EN["time"])),
        "de": ("https://docs.example.org/de/backups.html",
               html_page("Sicherung", ARTICLE_DE, lang="de")),
    })  # fmt: skip
    return a, b, ids


def outcome(data_dir):
    """What a dataset decided, independent of how its files are split: kept ids and
    {removed id: (reason, duplicate_of)}."""
    kept = set(read_documents(data_dir, ["id"]).column("id").to_pylist())
    removed = {}
    for path in sorted((data_dir / "removed").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            removed[row["id"]] = (row["stage"], row["reason"], row["duplicate_of"])
    return kept, removed


@pytest.fixture(scope="module")
def incremental(crawls, tmp_path_factory):
    a, b, _ = crawls
    out = tmp_path_factory.mktemp("incremental") / "data"
    first = refresh_dataset([a], out)
    first_files = {e["path"]: e["sha256"] for e in first["outputs"]}
    second = refresh_dataset([b], out)
    return out, first, first_files, second


def test_a_refresh_adds_a_version_whose_manifest_names_its_parent(incremental):
    out, first, first_files, second = incremental
    assert (first["version"], first["parent_version"]) == (1, None)
    assert second["version"] == 2
    parent = second["parent_version"]
    assert parent["version"] == 1
    assert parent["manifest"] == "versions/v00001.json"
    assert sha256_file(out / parent["manifest"]) == parent["sha256"]
    assert json.loads((out / parent["manifest"]).read_text()) == first
    # Old files are listed still and never rewritten.
    listed = {e["path"]: e["sha256"] for e in second["outputs"]}
    assert all(listed[path] == digest for path, digest in first_files.items())
    verify_outputs(out)
    assert second["counts"]["responses"] == 6
    assert second["version_counts"]["responses"] == 3
    assert [item["path"].rsplit("/", 1)[1] for item in second["inputs"]] == [
        "crawl-00000.warc.gz", "crawl-00001.warc.gz",
    ]  # fmt: skip


def test_new_copies_of_documents_kept_before_are_removed_in_their_favour(incremental, crawls):
    out, *_ = incremental
    _, _, ids = crawls
    kept, removed = outcome(out)
    assert removed[ids["mirror"]] == ("dedup", "near_duplicate", ids["long"])
    assert removed[ids["time-copy"]] == ("dedup", "exact_duplicate", ids["time"])
    assert kept == {ids["long"], ids["time"], ids["printing"], ids["de"]}


def test_documents_are_partitioned_by_language_and_read_by_directory(incremental):
    out, *_ = incremental
    files = dataset_doc_files(out)
    assert {partition_language(p) for p in files} == {"en", "de"}
    assert all("lang" not in pq.read_schema(p).names for p in files)
    table = pq.read_table(out / "docs")  # any Hive-aware reader sees the language
    assert sorted(set(table.column("lang").to_pylist())) == ["de", "en"]
    assert sorted(read_documents(out, ["lang"]).column("lang").to_pylist()) == [
        "de", "en", "en", "en",
    ]  # fmt: skip


def test_inputs_in_the_ledger_are_skipped(incremental, crawls):
    out, _, _, second = incremental
    a, b, _ = crawls
    assert unprocessed_inputs(out, [a, b]) == ([], [a, b])
    remote = "https://crawl.example.org/crawl-00002.warc.gz"  # digest unknown until read
    assert unprocessed_inputs(out, [remote, a]) == ([remote], [a])
    assert {entry["version"] for entry in ledger(out).values()} == {1, 2}
    assert refresh_dataset([a, b], out) == second  # nothing new: no new version


def test_incremental_refreshes_equal_one_run_from_scratch(incremental, crawls, tmp_path):
    out, *_ = incremental
    a, b, _ = crawls
    scratch = tmp_path / "scratch"
    refresh_dataset([a, b], scratch)
    assert outcome(scratch) == outcome(out)


def test_a_deleted_index_is_rebuilt_from_the_kept_documents(crawls, incremental, tmp_path):
    a, b, _ = crawls
    out = tmp_path / "data"
    refresh_dataset([a], out)
    before = load_index(out, DataConfig().minhash)
    shutil.rmtree(out / "index")
    rebuilt = load_index(out, DataConfig().minhash)
    assert (rebuilt.keys == before.keys).all() and (rebuilt.bands == before.bands).all()
    assert rebuilt.ids(range(len(rebuilt))) == before.ids(range(len(before)))

    manifest = refresh_dataset([b], out)
    assert outcome(out) == outcome(incremental[0])
    assert [e["path"] for e in manifest["outputs"] if e["path"].startswith("index/")] == [
        "index/v00002.parquet"
    ]
    verify_outputs(out)
    assert len(load_index(out, DataConfig().minhash)) == 4


def test_a_crash_mid_refresh_leaves_the_previous_version_intact(crawls, tmp_path, monkeypatch):
    a, b, _ = crawls
    out = tmp_path / "data"
    refresh_dataset([a], out)
    before = read_manifest(out)
    files_before = sorted(p for p in out.rglob("*") if p.is_file())

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dataset_writer, "_write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        refresh_dataset([b], out)
    assert read_manifest(out) == before
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files_before
    verify_outputs(out)


def plain_read_ids(data_dir):
    """Document ids as the README reads them, without lmforge: `pq.read_table("data/docs")`."""
    return sorted(pq.read_table(data_dir / "docs", columns=["id"]).column("id").to_pylist())


def test_a_version_being_written_is_invisible_to_a_plain_parquet_reader(crawls, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    a, b, _ = crawls
    out = tmp_path / "data"
    refresh_dataset([a], out)
    committed = plain_read_ids(out)
    seen_while_writing = []

    def read_then_crash(*args, **kwargs):  # version 2's documents are written by now
        seen_while_writing.append(plain_read_ids(out))
        raise OSError("disk full")

    monkeypatch.setattr(dataset_writer, "_write_index", read_then_crash)
    with pytest.raises(OSError, match="disk full"):
        refresh_dataset([b], out)
    assert seen_while_writing == [committed]
    assert plain_read_ids(out) == committed


# Runs `refresh_dataset(argv[1], argv[2])` and is killed (SIGKILL: no cleanup runs) once the
# version's document and removed parts are written, before its index, ledger and commit.
KILLED_REFRESH = """
import os, signal, sys
from lmforge.tasks.data import dataset_writer
from lmforge.tasks.data.refresh import refresh_dataset

dataset_writer._write_index = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
refresh_dataset([sys.argv[1]], sys.argv[2], staging_dir=sys.argv[3])
"""


def killed_refresh(warc, out, staging):
    result = subprocess.run([sys.executable, "-c", KILLED_REFRESH, str(warc), str(out),
                             str(staging)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_a_refresh_killed_mid_write_leaves_the_previous_version_readable(crawls, tmp_path):
    a, b, _ = crawls
    out = tmp_path / "data"
    refresh_dataset([a], out)
    before, committed = read_manifest(out), plain_read_ids(out)

    killed_refresh(b, out, tmp_path / "staging")
    assert plain_read_ids(out) == committed
    assert read_manifest(out) == before
    verify_outputs(out)

    manifest = refresh_dataset([b], out)  # the next refresh removes the leftovers, then commits
    assert manifest["version"] == 2
    assert not list(out.glob(".uncommitted-*"))
    on_disk = {p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert on_disk == {out / e["path"] for e in manifest["outputs"]}
    assert plain_read_ids(out) == sorted(read_documents(out, ["id"]).column("id").to_pylist())


def test_a_first_version_that_crashes_leaves_no_output_folder(crawls, tmp_path, monkeypatch):
    a, _, _ = crawls
    killed_refresh(a, tmp_path / "killed", tmp_path / "staging")
    assert not (tmp_path / "killed").exists()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dataset_writer, "_write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        refresh_dataset([a], tmp_path / "failed")
    assert not (tmp_path / "failed").exists()
    assert not list(tmp_path.glob(".failed.tmp-*"))


def test_leftovers_of_a_killed_refresh_are_never_read_and_are_removed_next_time(crawls, tmp_path):
    a, b, _ = crawls
    out = tmp_path / "data"
    refresh_dataset([a], out)
    # What a refresh killed before its commit leaves: files that no manifest lists.
    stray = out / "docs" / "lang=en" / "part-v00002-00000.parquet"
    stray.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(dataset_doc_files(out)[0], stray)
    assert stray not in dataset_doc_files(out)

    refresh_dataset([b], out)
    verify_outputs(out)
    listed = {out / e["path"] for e in read_manifest(out)["outputs"]}
    assert all(p in listed for p in out.rglob("*.parquet"))


def test_a_dataset_built_with_other_settings_is_replaced(crawls, tmp_path):
    a, b, _ = crawls
    out = tmp_path / "data"
    refresh_dataset([a], out)
    manifest = refresh_dataset([b], out, DataConfig(min_lang_score=0.5))
    assert manifest["version"] == 1 and manifest["counts"]["responses"] == 3
    verify_outputs(out)
