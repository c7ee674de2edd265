"""Model Registry: a checkpoint registered in MLflow loads back with the same logits, its versions
carry their lineage tags, and the `candidate` alias follows the newest version."""

from __future__ import annotations

import mlflow
import mlflow.pytorch
import torch
from mlflow.tracking import MlflowClient

from lmforge.flows import tracking
from lmforge.flows.registry import register_checkpoint, versions_of_run
from lmforge.manifest import build_manifest, manifest_digest, write_manifest
from lmforge.model.checkpoint import save_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT


def write_training_output(directory, seed: int) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=16)).eval()
    save_model(model, directory)
    write_manifest(directory, build_manifest(directory, "pretrain", {}, [], {}))
    return model


def test_registered_model_loads_back_with_identical_logits_and_the_alias_moves(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(tracking, "_configured_uri", None)
    tracking.configure_tracking(tmp_path)
    first = write_training_output(tmp_path / "first", seed=0)
    second = write_training_output(tmp_path / "second", seed=1)

    with tracking.stage_run("pretrain", {}) as run:
        version_one = register_checkpoint(tmp_path / "first", "test-lm")
    assert str(version_one.version) == "1"
    assert version_one.tags["lmforge.training_run_id"] == run.info.run_id
    assert version_one.tags["lmforge.checkpoint_manifest_sha256"] == manifest_digest(
        tmp_path / "first"
    )
    assert [str(v.version) for v in versions_of_run(run.info.run_id)] == ["1"]
    with tracking.stage_run("pretrain", {}):
        register_checkpoint(tmp_path / "second", "test-lm")

    client = MlflowClient()
    assert str(client.get_model_version_by_alias("test-lm", "candidate").version) == "2"
    tokens = torch.randint(0, 64, (3, 16))
    for uri, model in (("models:/test-lm/1", first), ("models:/test-lm@candidate", second)):
        loaded = mlflow.pytorch.load_model(uri)
        with torch.no_grad():
            torch.testing.assert_close(loaded(tokens), model(tokens), rtol=1e-5, atol=1e-5)


def test_a_version_loads_from_mlflow_after_its_folder_is_deleted(tmp_path, monkeypatch):
    import shutil

    from lmforge.flows.registry import version_checkpoint
    from lmforge.model.checkpoint import load_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(tracking, "_configured_uri", None)
    tracking.configure_tracking(tmp_path)
    model = write_training_output(tmp_path / "train", seed=3)
    with tracking.stage_run("pretrain", {}):
        version = register_checkpoint(tmp_path / "train", "test-lm")
    shutil.rmtree(tmp_path / "train")

    fetched = version_checkpoint(version, tmp_path / "fetched")
    tokens = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(load_model(fetched)(tokens), model(tokens))
    assert manifest_digest(fetched) == version.tags["lmforge.checkpoint_manifest_sha256"]
