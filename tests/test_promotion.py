"""Gated promotion: a new model version becomes @champion only when it beats the champion on the
model line's pinned held-out set; otherwise @challenger or deleted; `promote` and `rollback`
move the alias by hand, and every move is recorded on the version and the registered model.

Versions are tiny GPTs trained for a few steps on the corpus: more steps, lower bits per byte."""

from __future__ import annotations

import json
import random
import shutil

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from lmforge.cli import main
from lmforge.flows import promotion, tracking
from lmforge.flows.promotion import (
    GateConfig,
    PromotionError,
    artifact_key,
    gate_new_version,
    promote,
    rollback,
)
from lmforge.flows.registry import register_checkpoint
from lmforge.manifest import build_manifest, sha256_file, stage_output, write_manifest
from lmforge.model.checkpoint import save_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.tasks.promotion.gate import beats
from lmforge.tasks.tokens.shards import is_validation_document
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, train_tokenizer
from lmforge.tracking_tags import CHECKPOINT_TAG

VAL_FRACTION = 0.5  # a corpus of 40 documents: about 20 held out
WORDS = [
    "the",
    "backup",
    "disk",
    "was",
    "restored",
    "to",
    "a",
    "server",
    "in",
    "the",
    "office",
    "before",
    "every",
    "night",
    "run",
]


def corpus(count: int, start: int = 0) -> list[dict[str, str]]:
    rng = random.Random(start)
    return [
        {"id": f"doc-{i:03d}", "text": " ".join(rng.choices(WORDS, k=30)), "lang": "en"}
        for i in range(start, start + count)
    ]


def write_data_dir(path, documents):
    """A finished data stage output holding `documents`."""
    with stage_output(path, "data_refresh", params={}) as stage:
        (stage.path / "docs").mkdir()
        pq.write_table(pa.Table.from_pylist(documents), stage.path / "docs" / "part-00000.parquet")
    return path


def train_checkpoint(directory, tokenizer, documents, steps: int):
    """A training output (weights, tokenizer, manifest) of a 1-layer GPT after `steps` AdamW
    steps on the documents; seeded, so each step count gives one fixed model."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=300, n_layer=1, n_head=2, d_model=32, max_seq_len=16))
    stream = torch.tensor([t for d in documents for t in tokenizer.encode(d["text"]).ids + [0]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - 17, (8,))
        windows = torch.stack([stream[s : s + 17] for s in starts.tolist()])
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_model(model.eval(), directory)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    write_manifest(directory, build_manifest(directory, "pretrain", {}, [], {}))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The data directory and three checkpoints: weak (untrained), mid, strong."""
    root = tmp_path_factory.mktemp("promotion")
    documents = corpus(40)
    tokenizer = train_tokenizer([d["text"] for d in documents], TokenizerConfig(vocab_size=300))
    checkpoints = {
        name: train_checkpoint(root / name, tokenizer, documents, steps)
        for name, steps in (("weak", 0), ("mid", 10), ("strong", 60))
    }
    return {"data": write_data_dir(root / "data", documents), "documents": documents, **checkpoints}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store with the `lmforge` experiment for the module (each test registers
    a model of its own name); returns its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setattr(tracking, "_configured_uri", None)
        tracking.configure_tracking(root)
        yield uri


@pytest.fixture
def lm(store, request) -> str:
    """This test's registered model name in the shared store."""
    return request.node.name.removeprefix("test_")[:40].rstrip("_")


def register(name: str, checkpoint) -> str:
    """A new version of `name` pointing at `checkpoint`, without exporting the model (what
    register_checkpoint does, minus the seconds the export takes)."""
    client = MlflowClient()
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    with mlflow.start_run() as run:
        pass
    version = client.create_model_version(
        name, f"runs:/{run.info.run_id}/model", run.info.run_id,
        tags={CHECKPOINT_TAG: str(checkpoint)},
    )  # fmt: skip
    return str(version.version)


def gate(name, version, checkpoint, models, tmp_path, **config):
    return gate_new_version(
        name, version, checkpoint, models["data"], GateConfig(**config), tmp_path / "work",
        val_fraction=VAL_FRACTION,
    )  # fmt: skip


def champion_of(name: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, "champion").version)


def version_tags(name: str, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(name, version).tags


def test_first_version_becomes_champion_and_pins_the_val_split(models, lm, tmp_path):
    with tracking.stage_run("pretrain", {}):
        version = str(register_checkpoint(models["mid"], lm).version)

    decision = gate(lm, version, models["mid"], models, tmp_path)

    assert decision.outcome == "champion" and decision.champion_version is None
    assert decision.metric == "val_bpb" and decision.lower_is_better
    assert 0 < decision.candidate_value < 20
    assert champion_of(lm) == "1"
    model = MlflowClient().get_registered_model(lm)
    assert model.tags["lmforge.champion_history"] == "1"
    pinned = mlflow.artifacts.download_artifacts(
        artifact_uri=model.tags["lmforge.heldout.uri"], dst_path=str(tmp_path / "download")
    )
    assert sha256_file(pinned) == model.tags["lmforge.heldout.sha256"]
    with open(pinned, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    expected = [d for d in models["documents"] if is_validation_document(d["id"], VAL_FRACTION)]
    assert 0 < len(expected) < len(models["documents"])
    assert records == expected
    assert model.tags["lmforge.heldout.documents"] == str(len(expected))
    tags = version_tags(lm, "1")
    assert tags["lmforge.gate.outcome"] == "champion"
    assert float(tags["lmforge.gate.value"]) == decision.candidate_value
    assert float(tags["lmforge.heldout.val_bpb"]) == decision.candidate_value
    assert tags["lmforge.heldout.sha256"] == model.tags["lmforge.heldout.sha256"]
    assert "first champion" in MlflowClient().get_model_version(lm, "1").description


def test_a_better_version_is_promoted_and_the_decision_is_published(
    models, lm, tmp_path, monkeypatch
):
    published = []
    monkeypatch.setattr(promotion, "publish_markdown", lambda *args: published.append(args))
    gate(lm, register(lm, models["weak"]), models["weak"], models, tmp_path)

    decision = gate(lm, register(lm, models["strong"]), models["strong"], models, tmp_path)

    assert decision.outcome == "promoted" and champion_of(lm) == "2"
    assert decision.candidate_value < decision.champion_value
    tags = version_tags(lm, "2")
    assert tags["lmforge.gate.champion_version"] == "1"
    assert float(tags["lmforge.gate.champion_value"]) == decision.champion_value
    assert tags["lmforge.gate.metric"] == "val_bpb" and tags["lmforge.gate.min_margin"] == "0.0"
    assert MlflowClient().get_registered_model(lm).tags["lmforge.champion_history"] == "1,2"
    assert [key for key, _ in published] == [artifact_key(lm)] * 2
    assert "beats champion version 1" in published[-1][1]


def test_a_worse_version_becomes_challenger_and_the_champion_stays(models, lm, tmp_path):
    gate(lm, register(lm, models["strong"]), models["strong"], models, tmp_path)

    decision = gate(lm, register(lm, models["weak"]), models["weak"], models, tmp_path)

    assert decision.outcome == "challenger" and decision.candidate_value > decision.champion_value
    assert champion_of(lm) == "1"
    assert str(MlflowClient().get_model_version_by_alias(lm, "challenger").version) == "2"
    assert version_tags(lm, "2")["lmforge.gate.outcome"] == "challenger"
    assert (
        "does not beat champion version 1" in MlflowClient().get_model_version(lm, "2").description
    )


def test_min_margin_refuses_a_gain_smaller_than_the_margin(models, lm, tmp_path):
    gate(lm, register(lm, models["mid"]), models["mid"], models, tmp_path)

    decision = gate(
        lm, register(lm, models["strong"]), models["strong"], models, tmp_path, min_margin=50.0
    )

    assert 0 < decision.champion_value - decision.candidate_value < 50.0
    assert decision.outcome == "challenger" and champion_of(lm) == "1"
    assert version_tags(lm, "2")["lmforge.gate.min_margin"] == "50.0"


def test_on_reject_none_deletes_the_refused_version_and_records_it_on_its_run(models, lm, tmp_path):
    gate(lm, register(lm, models["strong"]), models["strong"], models, tmp_path)
    version = register(lm, models["weak"])
    run_id = MlflowClient().get_model_version(lm, version).run_id

    decision = gate(lm, version, models["weak"], models, tmp_path, on_reject="none")

    assert decision.outcome == "rejected"
    assert [str(v.version) for v in MlflowClient().search_model_versions(f"name = '{lm}'")] == ["1"]
    run_tags = MlflowClient().get_run(run_id).data.tags
    assert run_tags["lmforge.gate.outcome"] == "rejected"
    assert run_tags["lmforge.gate.version"] == f"{lm}:2"


def test_the_pinned_set_is_used_after_the_data_dir_grows_and_is_deleted(models, lm, tmp_path):
    data = write_data_dir(tmp_path / "data", models["documents"])
    first = gate_new_version(
        lm, register(lm, models["weak"]), models["weak"], data, GateConfig(),
        tmp_path / "work-1", val_fraction=VAL_FRACTION,
    )  # fmt: skip
    pinned = dict(MlflowClient().get_registered_model(lm).tags)
    write_data_dir(data, models["documents"] + corpus(40, start=100))

    grown = gate_new_version(
        lm, register(lm, models["mid"]), models["mid"], data, GateConfig(),
        tmp_path / "work-1", val_fraction=VAL_FRACTION,
    )  # fmt: skip
    shutil.rmtree(data)
    gone = gate_new_version(
        lm, register(lm, models["strong"]), models["strong"], data, GateConfig(),
        tmp_path / "work-2", val_fraction=VAL_FRACTION,
    )  # fmt: skip

    assert MlflowClient().get_registered_model(lm).tags == {
        **pinned,
        "lmforge.champion_history": "1,2,3",
    }
    assert first.heldout_sha256 == grown.heldout_sha256 == gone.heldout_sha256
    assert [first.outcome, grown.outcome, gone.outcome] == ["champion", "promoted", "promoted"]
    assert gone.champion_value == grown.candidate_value  # the recorded score, same documents


def test_a_champion_without_a_score_on_the_set_is_scored_from_its_checkpoint(models, lm, tmp_path):
    promote(lm, register(lm, models["strong"]), reason="chosen before gating")

    decision = gate(lm, register(lm, models["weak"]), models["weak"], models, tmp_path)

    assert decision.outcome == "challenger" and decision.champion_version == "1"
    assert float(version_tags(lm, "1")["lmforge.heldout.val_bpb"]) == decision.champion_value


def test_promote_and_rollback_move_the_champion_and_record_each_move(models, lm, tmp_path):
    for name in ("weak", "mid", "strong"):  # each beats the one before
        gate(lm, register(lm, models[name]), models[name], models, tmp_path)
    assert champion_of(lm) == "3"

    first = rollback(lm)
    second = rollback(lm)

    assert (first.candidate_version, first.champion_version) == ("2", "3")
    assert (second.candidate_version, second.champion_version) == ("1", "2")
    assert champion_of(lm) == "1" and second.outcome == "rolled-back"
    assert version_tags(lm, "1")["lmforge.gate.outcome"] == "rolled-back"
    description = MlflowClient().get_model_version(lm, "1").description
    assert "rolled back from version 2 to version 1" in description
    assert "first champion" in description  # earlier paragraphs are kept
    assert "demoted" in MlflowClient().get_model_version(lm, "3").description
    with pytest.raises(PromotionError, match="no champion before version 1"):
        rollback(lm)

    manual = promote(lm, "3", reason="the strongest after all")

    assert manual.outcome == "promoted-manually" and champion_of(lm) == "3"
    assert manual.candidate_value < manual.champion_value  # recorded scores, not re-measured
    assert "the strongest after all" in version_tags(lm, "3")["lmforge.gate.reason"]
    assert MlflowClient().get_registered_model(lm).tags["lmforge.champion_history"] == "1,3"
    assert rollback(lm).candidate_version == "1"


def test_cli_promote_and_rollback_and_a_one_line_error_for_an_unknown_version(
    models, store, lm, capsys
):
    register(lm, models["weak"])
    register(lm, models["mid"])

    assert main(["promote", lm, "1", "--tracking-uri", store]) == 0
    assert main(["promote", lm, "2", "--reason", "newer", "--tracking-uri", store]) == 0
    assert main(["rollback", lm, "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "rolled back from version 2 to version 1" in out and champion_of(lm) == "1"

    assert main(["promote", lm, "9", "--tracking-uri", store]) == 2
    error = capsys.readouterr().err.splitlines()
    assert error[0] == f"lmforge promote: error: {lm} has no version 9: its versions are 1, 2"
    assert main(["rollback", "no-such-model", "--tracking-uri", store]) == 2
    assert "no registered model is called 'no-such-model'" in capsys.readouterr().err


def test_gate_config_knows_its_metrics_and_a_tie_never_promotes():
    with pytest.raises(ValidationError, match="not one of val_bpb, val_loss"):
        GateConfig(metric="accuracy")
    assert not beats("val_bpb", 2.0, 2.0, 0.0)
    assert beats("val_bpb", 1.9, 2.0, 0.1) and not beats("val_bpb", 1.95, 2.0, 0.1)
