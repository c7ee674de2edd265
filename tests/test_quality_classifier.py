"""The fastText quality classifier: trained on reference text against web junk it separates
them on held-out documents; sources of every kind are read and bad ones refused by name before
training; training runs with the full fastText build in a subprocess while this process keeps
the predict-only build that language ID and scoring use."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import fasttext
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.flows.tracking import numeric_metrics
from lmforge.manifest import ManifestError, read_manifest, stage_output
from lmforge.tasks.data.language_id import LanguageIdentifier, bundled_model_path
from lmforge.tasks.data.quality.classifier import (
    LABELS,
    QualityClassifier,
    QualityClassifierError,
    normalize_text,
)
from lmforge.tasks.data.quality.sources import (
    QualitySourceError,
    check_source,
    read_source,
    source_files,
)
from lmforge.tasks.data.quality.train import (
    STAGE,
    TRAINER_ENV,
    ClassDocuments,
    FastTextParams,
    FastTextTrainerError,
    QualityTrainConfig,
    QualityTrainError,
    document_hash,
    heldout_metrics,
    read_class,
    roc_auc,
    roc_curve,
    sample_and_split,
    train_quality_classifier,
    trainer_dir,
)

# Small and quick: ~1 MB models that train in well under a second on a thousand documents.
SMALL = QualityTrainConfig(
    heldout_fraction=0.2, balance=True, fasttext=FastTextParams(dim=16, bucket=20_000)
)

COMMON = "the of and to in a is that for it with as on this by was are be".split()
REFERENCE = (
    "theorem proof equation analysis hypothesis experiment measurement evidence method result "
    "observation theory variable function derivative integral estimate sample population "
    "chapter history century government economy species molecule"
).split()
JUNK = (
    "click buy now free discount casino bonus login subscribe offer deal cheap win prize "
    "winner shipping coupon promo limited password cart checkout sale hot"
).split()


def documents(words: list[str], count: int, seed: int) -> list[str]:
    """`count` documents of 30-60 words: common words, 15% from `words` and 5% from the other
    class's list (no single word decides: held-out AUC about 0.97), line breaks, capitals."""
    rng = random.Random(seed)
    other = JUNK if words is REFERENCE else REFERENCE
    texts = []
    for _ in range(count):
        picked = []
        for position in range(rng.randint(30, 60)):
            draw = rng.random()
            pool = words if draw < 0.15 else other if draw < 0.2 else COMMON
            word = rng.choice(pool)
            picked.append(word.capitalize() if position % 11 == 0 else word)
            if position % 17 == 16:
                picked.append("\n")
        texts.append(" ".join(picked))
    return texts


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """Positives as JSONL (one repeated document, one empty), negatives as a Parquet folder."""
    root = tmp_path_factory.mktemp("quality-sources")
    positives = documents(REFERENCE, 600, seed=1)
    records = [{"text": text} for text in positives] + [{"text": positives[0]}, {"text": ""}]
    negatives = documents(JUNK, 700, seed=2)
    write_parquet(root / "junk" / "part-0.parquet", {"text": negatives[:350]})
    write_parquet(root / "junk" / "part-1.parquet", {"text": negatives[350:]})
    return {"positive": write_jsonl(root / "reference.jsonl", records), "negative": root / "junk"}


@pytest.fixture(scope="module")
def trained(corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "model"
    return train_quality_classifier([corpora["positive"]], [corpora["negative"]], out, SMALL)


# --- training and scoring ----------------------------------------------------------------------


def test_training_separates_reference_text_from_web_junk(trained):
    metrics = trained.metrics
    assert metrics.auc > 0.9
    assert metrics.f1 > 0.8 and metrics.precision > 0.8 and metrics.recall > 0.8
    assert metrics.positives == trained.counts["positive"]["heldout"] > 0
    assert metrics.negatives == trained.counts["negative"]["heldout"] > 0
    assert roc_auc(trained.heldout_labels, trained.heldout_scores) == metrics.auc


def test_the_output_folder_holds_the_model_metrics_and_a_manifest(trained, corpora):
    manifest = read_manifest(trained.out_dir, stage=STAGE)
    assert {entry["path"] for entry in manifest["outputs"]} == {"model.bin", "metrics.json"}
    saved = json.loads((trained.out_dir / "metrics.json").read_text())
    assert saved["heldout"]["auc"] == pytest.approx(trained.metrics.auc)
    assert saved["counts"] == manifest["counts"] == trained.counts
    assert saved["labels"] == {"positive": LABELS[0], "negative": LABELS[1]}
    assert manifest["params"]["fasttext"]["dim"] == 16
    sources = {str(corpora["positive"].resolve()), str(corpora["negative"].resolve())}
    assert {entry["path"] for entry in manifest["inputs"]} == sources


def test_repeats_and_empty_texts_are_counted_and_classes_balanced(trained):
    positive, negative = trained.counts["positive"], trained.counts["negative"]
    assert (positive["documents"], positive["duplicates"], positive["empty"]) == (601, 1, 1)
    assert (negative["documents"], negative["duplicates"], negative["empty"]) == (700, 0, 0)
    assert positive["used"] == negative["used"] == 600  # the larger class sampled down
    assert positive["train"] + positive["heldout"] == 600


def test_the_classifier_scores_unseen_documents_in_this_process(trained):
    classifier = QualityClassifier.load(trained.out_dir)  # the folder, or its model.bin
    reference, junk = documents(REFERENCE, 50, seed=7), documents(JUNK, 50, seed=8)
    scores = classifier.score_many(reference + junk)
    assert scores.shape == (100,) and scores.dtype == np.float64
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.median(scores[:50]) > 0.8 and np.median(scores[50:]) < 0.2
    assert classifier.score(reference[0]) == scores[0]
    assert classifier.score(" \n\t") == 0.0  # no words: nothing that reads like reference text


def test_training_runs_in_a_subprocess_and_this_process_keeps_the_predict_only_fasttext(trained):
    # `trained` has run the trainer; this process's `fasttext` is still fasttext-predict's.
    assert sys.modules["fasttext"] is fasttext
    assert not hasattr(fasttext, "train_supervised")
    assert trainer_dir() not in Path(fasttext.__file__).parents
    english = "The weather was fine, so we walked along the river and talked about the book."
    assert LanguageIdentifier().identify(english).lang == "en"
    model = QualityClassifier.load(trained.out_dir)._model
    assert isinstance(model, fasttext.FastText._FastText)  # loaded by the predict-only build
    # The trainer folder holds the build that trains, under the same module name.
    probe = subprocess.run(
        [sys.executable, "-c", "import fasttext; print(fasttext.__file__, "
         "hasattr(fasttext, 'train_supervised'))"],
        env={**os.environ, "PYTHONPATH": str(trainer_dir())},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    where, trains = probe.stdout.split()
    assert trainer_dir() in Path(where).parents and trains == "True"


def test_the_same_seed_gives_the_same_model(trained, corpora, tmp_path):
    again = train_quality_classifier(
        [corpora["positive"]], [corpora["negative"]], tmp_path / "again", SMALL
    )
    model = (trained.out_dir / "model.bin").read_bytes()
    assert (again.out_dir / "model.bin").read_bytes() == model


# --- documents, sample and split ---------------------------------------------------------------


def test_normalize_text_puts_a_document_on_one_lowercase_line():
    assert normalize_text("  Hello\nWORLD\r\n\tand\x00more  ") == "hello world and more"
    assert normalize_text("\n \t") == ""


def fake_class(count: int, prefix: str) -> ClassDocuments:
    texts = {document_hash(f"{prefix} {i}"): f"{prefix} {i}" for i in range(count)}
    return ClassDocuments(texts, {})


def test_sampling_is_seeded_and_capped_and_the_split_follows_the_text():
    classes = {"positive": fake_class(300, "good"), "negative": fake_class(1000, "bad")}
    config = QualityTrainConfig(max_docs_per_class=500, heldout_fraction=0.2, balance=True)
    splits = sample_and_split(classes, config)
    assert classes["positive"].counts["used"] == classes["negative"].counts["used"] == 300
    unbalanced = sample_and_split(classes, config.model_copy(update={"balance": False}))
    assert classes["negative"].counts["used"] == 500
    assert sample_and_split(classes, config) == splits  # deterministic
    reseeded = sample_and_split(classes, config.model_copy(update={"seed": 1}))
    assert set(reseeded["negative"]["train"]) != set(splits["negative"]["train"])
    # A document held out in one sample is held out in every sample that has it.
    heldout = set(splits["negative"]["heldout"]) | set(reseeded["negative"]["heldout"])
    trained_on = set(unbalanced["negative"]["train"]) | set(reseeded["negative"]["train"])
    assert not heldout & trained_on


def test_a_class_too_small_to_hold_documents_out_is_refused():
    classes = {"positive": fake_class(2, "good"), "negative": fake_class(50, "bad")}
    with pytest.raises(QualityTrainError, match="positive class has 2 distinct documents"):
        sample_and_split(classes, QualityTrainConfig(heldout_fraction=0.01))


def test_read_class_counts_repeats_after_normalizing(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [{"text": "Same Text"}, {"text": "same\ntext"},
                                                {"text": None}, {"text": "  "}])  # fmt: skip
    read = read_class([source])
    assert list(read.texts.values()) == ["same text"]
    assert read.counts == {"sources": 1, "documents": 2, "empty": 2, "duplicates": 1}


# --- held-out metrics --------------------------------------------------------------------------


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positives, negatives = scores[labels], scores[~labels]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0
            for p, n in itertools.product(positives, negatives)]  # fmt: skip
    return sum(wins) / len(wins)


def test_roc_auc_is_the_chance_a_positive_outscores_a_negative_ties_counting_half():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.4
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))
    assert roc_auc(np.array([True, False]), np.array([0.9, 0.1])) == 1.0
    assert roc_auc(np.array([True, False]), np.array([0.1, 0.9])) == 0.0
    assert roc_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    fpr, tpr = roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="positive and negative"):
        roc_curve(np.array([True, True]), np.array([0.1, 0.2]))


def test_precision_recall_and_f1_at_the_threshold():
    labels = np.array([True, True, True, False, False])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.1])  # tp 2, fp 1, fn 1
    metrics = heldout_metrics(labels, scores, threshold=0.5)
    assert (metrics.precision, metrics.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert metrics.f1 == pytest.approx(2 / 3) and metrics.accuracy == pytest.approx(0.6)
    assert heldout_metrics(labels, scores, threshold=0.95).precision == 0.0  # nothing predicted


# --- sources -----------------------------------------------------------------------------------


def test_a_dataset_directory_is_read_from_its_committed_documents(tmp_path):
    with stage_output(tmp_path / "data", "data_refresh", params={}) as stage:
        write_parquet(stage.path / "docs" / "lang=en" / "part-v00001-00000.parquet",
                      {"id": ["a", "b"], "url": ["a", "b"], "text": ["first doc", "second doc"]})
    stray = write_parquet(tmp_path / "data" / "docs" / "lang=en" / "part-v00009-00000.parquet",
                          {"id": ["c"], "url": ["c"], "text": ["not committed"]})  # fmt: skip
    assert stray.is_file()
    assert read_source(tmp_path / "data").texts == ["first doc", "second doc"]


def test_a_parquet_folder_skips_hidden_files(tmp_path):
    write_parquet(tmp_path / "docs" / "b" / "part.parquet", {"text": ["two"]})
    write_parquet(tmp_path / "docs" / "a.parquet", {"text": ["one", None]})
    write_parquet(tmp_path / "docs" / ".tmp" / "part.parquet", {"text": ["half written"]})
    read = read_source(tmp_path / "docs")
    assert (read.texts, read.empty) == (["one", "two"], 1)
    assert [f.format for f in source_files(tmp_path / "docs")] == ["parquet", "parquet"]


def bad_source(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A source of `kind` and what the error says about it."""
    if kind == "missing":
        return tmp_path / "nowhere.jsonl", "does not exist"
    if kind == "parquet without text":
        return write_parquet(tmp_path / "x.parquet", {"body": ["a"]}), "no 'text' column"
    if kind == "parquet with numbers for text":
        return write_parquet(tmp_path / "x.parquet", {"text": [1, 2]}), "is int64, not text"
    if kind == "not parquet":
        (tmp_path / "x.parquet").write_text("no footer here")
        return tmp_path / "x.parquet", "not a readable Parquet file"
    if kind == "malformed jsonl":
        (tmp_path / "x.jsonl").write_text('{"text": "fine"}\n{"text": "cut off\n')
        return tmp_path / "x.jsonl", "x.jsonl:2: not valid JSON"
    if kind == "jsonl without text":
        return write_jsonl(tmp_path / "x.jsonl", [{"body": "a"}]), "x.jsonl:1: no 'text' field"
    if kind == "jsonl with a list for text":
        return write_jsonl(tmp_path / "x.jsonl", [{"text": ["a"]}]), "'text' is list, not a str"
    if kind == "no documents":
        return write_jsonl(tmp_path / "x.jsonl", [{"text": ""}]), "holds no documents"
    if kind == "unknown format":
        (tmp_path / "x.csv").write_text("text\nhello\n")
        return tmp_path / "x.csv", "neither Parquet"
    if kind == "folder without parquet":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty", "without *.parquet files"
    raise AssertionError(kind)


BAD_SOURCES = ["missing", "parquet without text", "parquet with numbers for text", "not parquet",
               "malformed jsonl", "jsonl without text", "jsonl with a list for text",
               "no documents", "unknown format", "folder without parquet"]  # fmt: skip


@pytest.mark.parametrize("kind", BAD_SOURCES)
def test_a_bad_source_is_refused_by_name_before_training(kind, corpora, tmp_path, monkeypatch):
    source, says = bad_source(tmp_path, kind)
    # Reaching the trainer would raise TypeError, not the error expected.
    monkeypatch.setattr("lmforge.tasks.data.quality.train.run_fasttext_trainer", None)
    with pytest.raises(QualitySourceError) as raised:
        train_quality_classifier([corpora["positive"]], [source], tmp_path / "out", SMALL)
    assert isinstance(raised.value, LmforgeError)
    assert str(source.name) in str(raised.value) and says in str(raised.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(QualitySourceError, match=re.escape(says)):
        check_source(source)  # what the command runs before its flow starts


def test_another_stages_output_is_not_a_dataset_source(tmp_path):
    with stage_output(tmp_path / "shards", "build_shards", params={}) as stage:
        (stage.path / "x").write_text("x")
    with pytest.raises(ManifestError, match="not a 'data_refresh' one"):
        read_source(tmp_path / "shards")


# --- the model file ----------------------------------------------------------------------------


def test_loading_what_is_not_a_quality_model_names_the_file(tmp_path):
    with pytest.raises(QualityClassifierError, match="nothing.bin does not exist"):
        QualityClassifier.load(tmp_path / "nothing.bin")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a fastText model at all")
    with pytest.raises(QualityClassifierError, match=f"{garbage} is not a fastText model"):
        QualityClassifier.load(garbage)
    lid = bundled_model_path()  # a fastText model, with language labels
    with pytest.raises(QualityClassifierError, match="not a quality classifier") as raised:
        QualityClassifier.load(lid)
    assert str(lid) in str(raised.value) and "__label__en" in str(raised.value)


# --- the trainer -------------------------------------------------------------------------------


def test_a_missing_trainer_says_how_to_install_it(corpora, tmp_path, monkeypatch):
    monkeypatch.setenv(TRAINER_ENV, str(tmp_path / "no-trainer"))
    with pytest.raises(FastTextTrainerError) as raised:
        train_quality_classifier([corpora["positive"]], [corpora["negative"]], tmp_path / "o")
    message = str(raised.value)
    assert "no-trainer" in message and "make install" in message
    assert "--target" in message and "fasttext-numpy2==" in message
    assert not (tmp_path / "o").exists()


def test_a_trainer_folder_named_relative_to_the_working_directory_works(tmp_path, monkeypatch):
    installed = trainer_dir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TRAINER_ENV, os.path.relpath(installed, tmp_path))
    assert trainer_dir() == installed.resolve()  # absolute: training runs inside it


def test_a_predict_only_build_as_trainer_is_refused(corpora, tmp_path, monkeypatch):
    site_packages = Path(fasttext.__file__).parents[1]  # holds fasttext-predict's `fasttext`
    monkeypatch.setenv(TRAINER_ENV, str(site_packages))
    with pytest.raises(FastTextTrainerError, match="cannot train .*predict-only"):
        train_quality_classifier([corpora["positive"]], [corpora["negative"]], tmp_path / "o",
                                 SMALL)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_a_diverging_training_says_to_lower_the_learning_rate(corpora, tmp_path):
    config = SMALL.model_copy(update={"fasttext": FastTextParams(dim=16, bucket=20_000, lr=50.0)})
    with pytest.raises(FastTextTrainerError, match="diverged; lower quality.fasttext.lr"):
        train_quality_classifier([corpora["positive"]], [corpora["negative"]], tmp_path / "o",
                                 config)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_fasttext_settings_are_checked_before_any_work():
    with pytest.raises(ValueError, match="maxn=2 must be at least minn=3"):
        FastTextParams(minn=3, maxn=2)
    assert FastTextParams().train_supervised_kwargs(seed=4)["wordNgrams"] == 2
    assert FastTextParams().train_supervised_kwargs(seed=4)["thread"] == 1


# --- the command -------------------------------------------------------------------------------


def test_the_command_refuses_a_missing_source_before_its_flow_starts(corpora, tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    out = tmp_path / "out"
    args = ["quality", "train", "--positive", str(missing), "--negative", str(corpora["negative"]),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err
    assert str(missing) in error and "does not exist" in error and "Traceback" not in error
    assert not out.exists()


@pytest.fixture
def cli_env(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # fmt: skip


def test_quality_train_command_end_to_end(corpora, cli_env, tmp_path):
    out = tmp_path / "quality"
    result = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "quality", "train",
         "--positive", str(corpora["positive"]), "--negative", str(corpora["negative"]),
         "--out", str(out), "--heldout-fraction", "0.2", "--quality.fasttext.dim", "16",
         "--quality.fasttext.bucket", "20000"],
        capture_output=True, text=True, env=cli_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["auc"] > 0.9 and Path(summary["model"]) == out / "model.bin"
    manifest = read_manifest(out, stage=STAGE)
    assert (out / "metrics.json").is_file() and (out / "config.yaml").is_file()
    client = MlflowClient(cli_env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("lmforge")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`lmforge.stage` = '{STAGE}'"
    )
    metrics = run.data.metrics
    assert metrics["auc"] == pytest.approx(summary["auc"], abs=1e-4)
    assert {"precision", "recall", "f1"} <= set(metrics)
    assert set(numeric_metrics(manifest["counts"])) <= set(metrics)  # train/heldout per class
    assert run.data.params["quality.fasttext.dim"] == "16"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert artifacts == {"model/model.bin"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/roc.png"}
