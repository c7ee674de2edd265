"""The data stage's steps: the registry round trip (one line makes a DataConfig field, a flag, a
recipe key, a funnel row, a `removed/` stage) and the decontaminate step on planted pages."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest
from data_stage_fixtures import ARTICLES_EN, html_page

from lmforge.cli import main
import argparse

from lmforge.recipes import add_config_flags, resolve_sections
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.dataset_versions import read_documents
from lmforge.tasks.data.refresh import refresh_dataset
from lmforge.tasks.data.steps.base import Document, Step, StepChain
from lmforge.tasks.data.steps.registry import TEXT_STEPS
from lmforge.tasks.data.warc import WarcResponse
from lmforge.tasks.data.warc_writer import WarcWriter

DATE = datetime(2024, 3, 1, tzinfo=timezone.utc)
# 16 words: a benchmark item long enough for 13-grams.
ITEM = "the committee argued that every migrating flock of geese rests twice near the northern lakes"
TWELVE_WORDS = "the committee argued that every migrating flock of geese rests twice near"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))


def benchmark_file(tmp_path):
    path = tmp_path / "bench" / "planted.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"text": ITEM}) + "\n" + json.dumps({"text": "short item"}) + "\n")
    return path


def planted_crawl(tmp_path):
    """Pages: the item's words inside an article (other case and punctuation), twelve of its
    words only, its words shuffled, and a clean article. Returns {label: url}."""
    shuffled = " ".join(reversed(ITEM.split()))

    def around(topic, line):  # distinct articles: no page is a near duplicate of another
        first, *rest = ARTICLES_EN[topic]
        return [first, line, *rest]

    pages = {
        "planted": around("backups", f"As we said: {ITEM.upper().replace(' FLOCK', ', flock')}!"),
        "twelve": around("printing", f"{TWELVE_WORDS}."),
        "shuffled": around("time", f"{shuffled}."),
        "clean": ARTICLES_EN["packages"],
    }
    path = tmp_path / "crawl.warc.gz"
    urls = {}
    with WarcWriter(path, date=DATE) as warc:
        for label, paragraphs in pages.items():
            urls[label] = f"https://docs.example.org/{label}.html"
            warc.write_fetch(urls[label], html_page(label.title(), paragraphs).encode())
    return path, urls


def resolve(argv, recipe):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, {"data": DataConfig}, flat=("data",))
    return resolve_sections(parser.parse_args(argv), {"data": DataConfig}, recipe)


def test_every_registered_step_is_a_config_field_a_flag_and_a_recipe_key(tmp_path):
    for name, step in TEXT_STEPS.items():
        assert DataConfig.model_fields[name].default == step.default
        sections = resolve([], {"data": {name: None}})
        assert getattr(sections["data"], name) is None
        assert name not in [s.name for s in sections["data"].text_steps()]
    defaults_on = [name for name, step in TEXT_STEPS.items() if step.default is not None]
    assert [s.name for s in DataConfig().steps()] == [
        "read", "url", "html", "extract", "language", *defaults_on]  # fmt: skip
    flags = resolve(["--data.c4_quality.min_sentences", "1", "--decontaminate",
                     str(benchmark_file(tmp_path))], {})  # fmt: skip
    assert flags["data"].c4_quality.min_sentences == 1
    assert flags["data"].decontaminate.benchmarks == (str(benchmark_file(tmp_path)),)
    restored = DataConfig.from_dict(json.loads(json.dumps(DataConfig().to_dict())))
    assert restored == DataConfig()


def test_step_order_reorders_the_text_steps_and_must_name_each_once():
    order = ("pii", *[name for name in TEXT_STEPS if name != "pii"])
    config = DataConfig(step_order=order)
    assert [s.name for s in config.text_steps()][0] == "pii"
    with pytest.raises(ValueError, match="must name each text step once"):
        DataConfig(step_order=("pii",))


class Shout(Step):
    name = "shout"

    def apply(self, doc):
        doc.text = doc.text.upper()


class DropShort(Step):
    name = "short"

    def apply(self, doc):
        return "too_short" if len(doc.text) < 5 else None


def test_a_chain_counts_each_step_under_its_name_and_a_transform_changes_the_bytes():
    response = WarcResponse("https://x.example/", "id", "f", 0, 200, "text/html", "utf-8",
                            b"<p>hi</p>", None)  # fmt: skip
    chain = StepChain([Shout(), DropShort()])
    doc = Document(response)
    doc.text = "abc"
    removal = chain.run(doc)
    assert (removal.stage, removal.reason) == ("short", "too_short")
    assert doc.text == "ABC"
    stats = chain.stats.to_dict()["steps"]
    assert stats["shout"] == {"docs_in": 1, "docs_out": 1, "bytes_in": 3, "bytes_out": 3,
                              "dropped": {}}  # fmt: skip
    assert stats["short"]["dropped"] == {"too_short": 1}


def test_decontamination_removes_exactly_the_pages_carrying_an_item_ngram(tmp_path):
    crawl, urls = planted_crawl(tmp_path)
    config = DataConfig(decontaminate={"benchmarks": [str(benchmark_file(tmp_path))]})
    manifest = refresh_dataset([str(crawl)], tmp_path / "data", config)
    removed = pq.read_table(tmp_path / "data" / "removed").to_pylist()
    contaminated = [row for row in removed if row["stage"] == "decontaminate"]
    assert [row["url"] for row in contaminated] == [urls["planted"]]
    assert contaminated[0]["reason"] == "benchmark_overlap"
    assert contaminated[0]["detail"] == "planted line 1"
    kept = {row["url"] for row in read_documents(tmp_path / "data").to_pylist()}
    assert kept == {urls["twelve"], urls["shuffled"], urls["clean"]}
    assert manifest["counts"]["steps"]["decontaminate"]["dropped"] == {"benchmark_overlap": 1}


def test_cut_mode_keeps_the_page_without_the_overlapping_span(tmp_path):
    crawl, urls = planted_crawl(tmp_path)
    config = DataConfig(
        decontaminate={"benchmarks": [str(benchmark_file(tmp_path))], "mode": "cut"}
    )
    refresh_dataset([str(crawl)], tmp_path / "data", config)
    docs = {row["url"]: row["text"] for row in read_documents(tmp_path / "data").to_pylist()}
    assert "FLOCK" not in docs[urls["planted"]].upper().split()
    assert ARTICLES_EN["backups"][0][:40] in docs[urls["planted"]]
    assert docs[urls["twelve"]].count("migrating") == 1


@pytest.mark.parametrize(
    ("flag", "name", "content"),
    [("--decontaminate", "broken.jsonl", b'{"text": "fine"}\n{not json\n'),
     ("--quality-model", "model.bin", b"not a fasttext model")],
)  # fmt: skip
def test_a_bad_step_file_is_refused_naming_it_before_any_work(
    flag, name, content, tmp_path, capsys
):
    crawl, _ = planted_crawl(tmp_path)
    bad = tmp_path / name
    bad.write_bytes(content)
    out = tmp_path / "data"
    code = main(["data", "refresh", "--input", str(crawl), "--out", str(out), flag, str(bad)])
    assert code == 2
    assert str(bad) in capsys.readouterr().err
    assert not out.exists()


# --- quality_classifier ------------------------------------------------------------------------

PROSE = [p for paragraphs in ARTICLES_EN.values() for p in paragraphs]
SPAM = ["cheap pills casino bonus click here now best replica watches free download win",
        "buy now limited offer casino loan bonus cheap cheap click subscribe free prize"]  # fmt: skip


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory):
    from lmforge.tasks.data.quality.train import QualityTrainConfig, train_quality_classifier

    root = tmp_path_factory.mktemp("quality")
    positive, negative = root / "positive.jsonl", root / "negative.jsonl"
    positive.write_text("".join(json.dumps({"text": f"{p} ({i})"}) + "\n"
                                for i in range(8) for p in PROSE))  # fmt: skip
    negative.write_text("".join(json.dumps({"text": f"{SPAM[i % 2]} {i} " * (1 + i % 5)}) + "\n"
                                for i in range(len(PROSE) * 8)))  # fmt: skip
    config = QualityTrainConfig(fasttext={"epoch": 10})
    train_quality_classifier([positive], [negative], root / "model", config)
    return root / "model"


# The classifier alone decides, as it would where heuristic filters miss a kind of junk.
NO_HEURISTICS = dict.fromkeys(("gopher_repetition", "gopher_quality", "c4_quality",
                               "fineweb_quality"))  # fmt: skip


def spam_and_prose_crawl(tmp_path):
    """Three prose articles and a page of spam sentences."""
    spam_page = [f"{SPAM[i % 2].capitalize()}, offer number {i} today." for i in range(12)]
    pages = {topic: ARTICLES_EN[topic] for topic in ("backups", "printing", "time")}
    pages["offers"] = [" ".join(spam_page[i:i + 4]) for i in range(0, 12, 4)]
    path = tmp_path / "crawl.warc.gz"
    with WarcWriter(path, date=DATE) as warc:
        for label, paragraphs in pages.items():
            warc.write_fetch(f"https://docs.example.org/{label}.html",
                             html_page(label.title(), paragraphs).encode())  # fmt: skip
    return path


def test_the_classifier_step_scores_every_kept_document_and_drops_low_scores(
    quality_model, tmp_path
):
    crawl = spam_and_prose_crawl(tmp_path)
    plain = refresh_dataset([str(crawl)], tmp_path / "plain", DataConfig(**NO_HEURISTICS))
    assert plain["counts"]["kept"] == 4
    config = DataConfig(**NO_HEURISTICS, quality_classifier={"model": str(quality_model)})
    manifest = refresh_dataset([str(crawl)], tmp_path / "data", config)
    kept = read_documents(tmp_path / "data").to_pylist()
    assert sorted(row["url"].rsplit("/", 1)[1] for row in kept) == [
        "backups.html", "printing.html", "time.html"]  # fmt: skip
    assert all(row["quality_score"] >= 0.5 for row in kept)
    assert manifest["counts"]["steps"]["quality_classifier"]["dropped"] == {"below_threshold": 1}
    unscored = read_documents(tmp_path / "plain").to_pylist()
    assert all(row["quality_score"] is None for row in unscored)


def test_keep_top_fraction_keeps_the_best_scored_share_of_each_language(quality_model, tmp_path):
    crawl = spam_and_prose_crawl(tmp_path)
    step = {"model": str(quality_model), "threshold": 0.0, "keep_top_fraction": "en=0.5"}
    manifest = refresh_dataset([str(crawl)], tmp_path / "data",
                               DataConfig(**NO_HEURISTICS, quality_classifier=step))  # fmt: skip
    kept = read_documents(tmp_path / "data").to_pylist()
    removed = pq.read_table(tmp_path / "data" / "removed").to_pylist()
    left_out = [row for row in removed if row["reason"] == "below_top_fraction"]
    assert len(kept) == 2 and len(left_out) == 2
    assert {row["stage"] for row in left_out} == {"quality_classifier"}
    assert min(row["quality_score"] for row in kept) > 0.5
    assert "offers.html" in {row["url"].rsplit("/", 1)[1] for row in left_out}
    assert manifest["counts"]["kept"] + manifest["counts"]["removed"] == 4



# --- extraction cache --------------------------------------------------------------------------


def staged_rows(result):
    tables = [pq.read_table(path) for path in (result.candidates_path, result.removed_path)]
    return [table.to_pylist() for table in tables]


def test_the_extraction_cache_gives_what_the_warc_file_gives_and_skips_the_early_steps(
    tmp_path, monkeypatch
):
    from lmforge.tasks.data.steps.page import Extraction
    from lmforge.tasks.data.warc_processing import process_warc_file

    crawl, _ = planted_crawl(tmp_path)
    cache = tmp_path / "cache"
    strict = DataConfig(min_lang_score=0.9, c4_quality=None)
    plain = process_warc_file(crawl, DataConfig(), tmp_path / "plain")
    filled = process_warc_file(crawl, DataConfig(), tmp_path / "filled", extraction_cache=cache)
    assert filled.stats["extraction_cache_hits"] == 0
    assert staged_rows(filled) == staged_rows(plain)

    def no_extraction(self, doc):
        raise AssertionError("extraction ran again")

    monkeypatch.setattr(Extraction, "apply", no_extraction)
    # Another language threshold and other text steps: the early work is read back.
    reused = process_warc_file(crawl, strict, tmp_path / "reused", extraction_cache=cache)
    monkeypatch.undo()
    fresh = process_warc_file(crawl, strict, tmp_path / "fresh")
    assert reused.stats["extraction_cache_hits"] == 1
    assert staged_rows(reused) == staged_rows(fresh)
    without_hits = {key: value for key, value in reused.stats.items()
                    if key != "extraction_cache_hits"}  # fmt: skip
    assert without_hits == {key: value for key, value in fresh.stats.items()
                            if key != "extraction_cache_hits"}  # fmt: skip
    assert (reused.sha256, reused.warc_file) == (fresh.sha256, fresh.warc_file)


def test_other_early_settings_do_not_share_an_entry(tmp_path):
    from lmforge.tasks.data.warc_processing import process_warc_file

    crawl, _ = planted_crawl(tmp_path)
    cache = tmp_path / "cache"
    process_warc_file(crawl, DataConfig(), tmp_path / "a", extraction_cache=cache)
    other = DataConfig(extraction={"main_content": False})
    result = process_warc_file(crawl, other, tmp_path / "b", extraction_cache=cache)
    assert result.stats["extraction_cache_hits"] == 0
    assert len(list(cache.glob("*.parquet"))) == 2


@pytest.mark.slow
def test_refreshes_differing_in_a_late_filter_reuse_the_early_work(tmp_path, monkeypatch):
    from lmforge.flows.data_refresh import data_refresh
    from lmforge.flows.params import DataRefreshRun

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr("lmforge.flows.tracking._configured_uri", None)
    crawl, _ = planted_crawl(tmp_path)

    def refresh(name, data):
        run = DataRefreshRun(input=[str(crawl)], out=str(tmp_path / name), runner="threads",
                             extraction_cache=str(tmp_path / "cache"))  # fmt: skip
        return data_refresh(data=data, run=run)["version_counts"]

    first = refresh("default", DataConfig())
    strict = refresh("strict", DataConfig(min_lang_score=0.9, gopher_quality=None))
    assert (first["extraction_cache_hits"], strict["extraction_cache_hits"]) == (0, 1)
    assert strict["steps"]["extract"] == first["steps"]["extract"]


def test_dedup_off_keeps_every_copy(tmp_path):
    crawl = tmp_path / "copies.warc.gz"
    page = html_page("Backups", ARTICLES_EN["backups"]).encode()
    with WarcWriter(crawl, date=DATE) as warc:
        for mirror in ("a", "b"):
            warc.write_fetch(f"https://{mirror}.example.org/backups.html", page)
    kept = refresh_dataset([str(crawl)], tmp_path / "dedup", DataConfig())["counts"]["kept"]
    manifest = refresh_dataset([str(crawl)], tmp_path / "all", DataConfig(dedup=False))
    assert (kept, manifest["counts"]["kept"]) == (1, 2)
    assert manifest["counts"]["dedup"]["exact_duplicates"] == 0
