"""Per-language validation metrics, checked against a brute-force computation from the documents."""

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from model_fixtures import BigramModel

from lmforge.manifest import stage_output
from lmforge.model.checkpoint import save_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tasks.evaluate.checkpoint import (
    EvalConfig,
    evaluate_checkpoint,
    language_metrics,
    shards_data_dir,
    shards_language_metrics,
    validation_documents,
)
from lmforge.tasks.tokens.shards import ShardConfig, build_shards, is_validation_document
from lmforge.tasks.tokens.tokenizer import load_tokenizer

VAL_FRACTION = 0.4
ENGLISH = "the cat sleeps on the mat while the dogs run in the park"
GERMAN = "die Katze schläft auf der Matte während die Hunde im Park laufen"


def documents_by_language() -> dict[str, list[tuple[str, str]]]:
    """(id, text) per language; lengths vary so that documents cross windows and shards."""
    words = {"en": ENGLISH.split(), "de": GERMAN.split()}
    return {
        lang: [(f"{lang}-{i}", " ".join(vocab[: 3 + i % 11]) * (1 + i % 4)) for i in range(60)]
        for lang, vocab in words.items()
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("languages")
    with stage_output(root / "data", "data_refresh", params={}) as stage:
        for lang, docs in documents_by_language().items():
            directory = stage.path / "docs" / f"lang={lang}"  # the language lives in the path
            directory.mkdir(parents=True)
            ids, texts = zip(*docs, strict=True)
            table = pa.table({"id": list(ids), "url": list(ids), "text": list(texts)})
            pq.write_table(table, directory / "part-v00001-00000.parquet")
    manifest = build_shards(
        root / "data", root / "shards",
        ShardConfig(vocab_size=300, shard_tokens=200, val_fraction=VAL_FRACTION),
    )  # fmt: skip
    return root, manifest


def brute_force(model: BigramModel, tokenizer, eot_id: int) -> dict[str, dict[str, float]]:
    """Each val document encoded from its text, scored token by token after <|endoftext|>."""
    log_probs = torch.log_softmax(model.table.detach(), dim=-1)
    expected = {}
    for lang, docs in documents_by_language().items():
        nats = tokens = size = count = 0
        for doc_id, text in docs:
            if not is_validation_document(doc_id, VAL_FRACTION):
                continue
            ids = [eot_id] + tokenizer.encode(text).ids + [eot_id]
            nats -= sum(log_probs[a, b].item() for a, b in zip(ids, ids[1:]))
            tokens += len(ids) - 1
            size += len(text.encode("utf-8"))
            count += 1
        expected[lang] = {
            "val_loss": nats / tokens,
            "val_bpb": nats / math.log(2) / size,
            "val_tokens": tokens,
            "val_bytes": size,
            "docs": count,
        }
    return expected


def test_per_language_metrics_match_a_token_by_token_computation(shards):
    root, manifest = shards
    tokenizer = load_tokenizer(root / "shards" / "tokenizer.json")
    eot_id = manifest["tokenizer"]["eot_id"]
    torch.manual_seed(0)
    model = BigramModel(torch.randn(manifest["tokenizer"]["vocab_size"], 300) * 2)
    documents = validation_documents(shards_data_dir(manifest), VAL_FRACTION)
    metrics = language_metrics(
        model, root / "shards" / "val", documents, eot_id=eot_id, pad_id=1,
        seq_len=8, batch_size=5, max_tokens_per_language=10**9,
    )  # fmt: skip
    expected = brute_force(model, tokenizer, eot_id)
    assert set(metrics) == {"de", "en"}
    for lang, values in expected.items():
        got = metrics[lang]
        assert got["val_tokens"] == values["val_tokens"] and got["docs"] == values["docs"]
        assert got["val_bytes"] == values["val_bytes"]
        assert got["val_loss"] == pytest.approx(values["val_loss"], rel=1e-5)
        assert got["val_bpb"] == pytest.approx(values["val_bpb"], rel=1e-5)
        assert got["val_ppl"] == pytest.approx(math.exp(values["val_loss"]), rel=1e-5)
    val = manifest["splits"]["val"]  # every document scored: the shards' own per-language counts
    assert {lang: m["val_tokens"] for lang, m in metrics.items()} == val["tokens_by_language"]
    assert {lang: m["val_bytes"] for lang, m in metrics.items()} == val["bytes_by_language"]


def test_each_language_stops_at_whole_documents_once_its_token_budget_is_reached(shards):
    root, manifest = shards
    documents = validation_documents(shards_data_dir(manifest), VAL_FRACTION)
    vocab = manifest["tokenizer"]["vocab_size"]
    full = manifest["splits"]["val"]["documents_by_language"]
    budget = 60
    metrics = language_metrics(
        BigramModel(torch.zeros(vocab, vocab)), root / "shards" / "val", documents,
        eot_id=manifest["tokenizer"]["eot_id"], pad_id=1, seq_len=16, batch_size=8,
        max_tokens_per_language=budget,
    )  # fmt: skip
    for lang, values in metrics.items():
        assert budget <= values["val_tokens"] < budget + 200  # whole documents, at most one over
        assert 0 < values["docs"] < full[lang]
        assert values["val_loss"] == pytest.approx(math.log(vocab))  # a uniform model


def test_a_missing_data_directory_skips_per_language_metrics_with_a_reason(shards, tmp_path):
    root, manifest = shards
    moved = {**manifest, "inputs": [{"path": str(tmp_path / "gone"), "stage": "data_refresh"}]}
    model = BigramModel(torch.zeros(4, 4))
    metrics, why = shards_language_metrics(
        model, root / "shards", moved, None, seq_len=8, batch_size=4, max_tokens_per_language=8
    )
    assert metrics is None and "gone is not available" in why
    metrics, why = shards_language_metrics(
        model, root / "shards", {**manifest, "inputs": []}, None,
        seq_len=8, batch_size=4, max_tokens_per_language=8,
    )  # fmt: skip
    assert metrics is None and "names no data directory" in why


def test_evaluate_checkpoint_reports_languages_or_why_they_were_skipped(shards, tmp_path):
    root, manifest = shards
    config = ModelConfig(
        vocab_size=manifest["tokenizer"]["vocab_size"], n_layer=1, n_head=2, d_model=16,
        max_seq_len=32,
    )  # fmt: skip
    torch.manual_seed(0)
    save_model(GPT(config), tmp_path / "train")
    settings = EvalConfig(max_val_tokens=64, batch_size=4, prompts=[], max_tokens_per_language=64)
    results = evaluate_checkpoint(tmp_path / "train", root / "shards", settings)
    assert set(results["languages"]) == {"de", "en"}
    for values in results["languages"].values():
        assert values["val_tokens"] >= 64 and values["val_bpb"] > 0
        assert np.isfinite(values["val_loss"])

    shutil.copytree(root / "shards", tmp_path / "shards")
    elsewhere = evaluate_checkpoint(
        tmp_path / "train", tmp_path / "shards", settings, data_dir=tmp_path / "nowhere"
    )
    assert "languages" not in elsewhere and "nowhere" in elsewhere["languages_skipped"]


def test_the_evaluate_flow_logs_language_metrics_and_a_language_table(
    shards, prefect_api, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from lmforge.flows.evaluate import evaluate
    from lmforge.flows.params import EvalRun
    from lmforge.tracking_tags import find_stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr("lmforge.flows.tracking._configured_uri", None)
    root, manifest = shards
    config = ModelConfig(
        vocab_size=manifest["tokenizer"]["vocab_size"], n_layer=1, n_head=2, d_model=16,
        max_seq_len=32,
    )  # fmt: skip
    save_model(GPT(config), tmp_path / "train")
    results = evaluate(
        eval=EvalConfig(
            max_val_tokens=64, max_tokens_per_language=64, prompts=["the"], max_new_tokens=2
        ),
        run=EvalRun(
            checkpoint=str(tmp_path / "train"), shards=str(root / "shards"),
            out=str(tmp_path / "eval"),
        ),
    )  # fmt: skip

    metrics = find_stage_run(tmp_path / "eval").data.metrics
    for lang, values in results["languages"].items():
        assert metrics[f"lang.{lang}.val_bpb"] == pytest.approx(values["val_bpb"])
        assert metrics[f"lang.{lang}.val_tokens"] == values["val_tokens"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluate-languages"]))
        )
    table = max(found, key=lambda artifact: artifact.created).data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [row["language"] for row in rows] == ["de", "en"]
    assert rows[0]["docs"] == results["languages"]["de"]["docs"]
