"""`lmforge lineage`'s text view shows what the manifests and runs hold in a person's terms: the
strategy a run trained with (not the unset default), counts as whole numbers. The chain is
built with the flows' own tracking calls on hand-written manifests, without training a model."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lmforge.cli import main
from lmforge.flows import tracking
from lmforge.flows.params import PretrainRun
from lmforge.flows.pretrain import tag_shards_input
from lmforge.flows.tracking import log_stage_manifest, section_values, stage_run
from lmforge.lineage import trained_strategy
from lmforge.manifest import (
    build_manifest,
    describe_input,
    manifest_digest,
    read_manifest,
    write_manifest,
)
from lmforge.model.config import ModelSpec
from lmforge.model.train import TrainConfig, TrainJob
from lmforge.tracking_tags import CHECKPOINT_DIGEST_TAG, CHECKPOINT_TAG


def write_stage(out: Path, stage: str, inputs: list, counts: dict, **extra) -> Path:
    out.mkdir(parents=True)
    (out / "part.bin").write_bytes(b"output")
    params = extra.pop("params", {})
    write_manifest(out, build_manifest(out, stage, params, inputs, counts, extra=extra))
    return out


@pytest.fixture
def registered_model(tmp_path, monkeypatch) -> tuple[str, Path]:
    """`lmforge-test` version 1 and the training folder it came from, in a SQLite store in
    tmp_path; the pretrain run was a default single-process one of a 1.1M-parameter model."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(tracking, "_configured_uri", None)
    uri = tracking.configure_tracking(tmp_path)
    warc = tmp_path / "crawl.warc.gz"
    warc.write_bytes(b"WARC/1.0")
    data = write_stage(tmp_path / "data", "data_refresh", [describe_input(warc)],
                       {"warc_files": 1, "responses": 2_500_000, "kept": 1_234_567})  # fmt: skip
    shards = write_stage(
        tmp_path / "shards", "build_shards", [describe_input(data)], {"tokens": 4_000_000},
        tokenizer={"sha256": "ab" * 32, "vocab_size": 400},
        splits={"train": {"documents": 900, "tokens": 3_900_000, "bytes": 15_000_000}},
    )  # fmt: skip
    sections = {"model": ModelSpec(), "train": TrainConfig(max_steps=300),
                "run": PretrainRun(shards=str(shards), out=str(tmp_path / "train"))}  # fmt: skip
    job = TrainJob(shards_dir=str(shards), out_dir=str(tmp_path / "train"),
                   model=sections["model"], train=sections["train"])  # fmt: skip
    train = write_stage(
        tmp_path / "train", "pretrain", [describe_input(shards)],
        {"steps": 300, "tokens": 1_228_800, "final_train_loss": 3.21, "final_val_loss": 3.5,
         "parameters": 1_115_264},
        params=job.model_dump(mode="json"), model_config=job.model.resolve(400).to_dict(),
    )  # fmt: skip
    with stage_run("data_refresh", {}):
        log_stage_manifest(data)
    with stage_run("build_shards", {}):
        log_stage_manifest(shards)
    with stage_run("pretrain", section_values(sections)) as run:
        tag_shards_input(log_stage_manifest(train, context="training"))
    client = MlflowClient()
    client.create_registered_model("lmforge-test")
    client.create_model_version(
        "lmforge-test", f"runs:/{run.info.run_id}/model", run.info.run_id,
        tags={CHECKPOINT_TAG: str(train), CHECKPOINT_DIGEST_TAG: manifest_digest(train)},
    )  # fmt: skip
    return uri, train


def test_lineage_prints_the_strategy_that_ran_and_whole_counts_of_the_manifests(
    registered_model, capsys
):
    uri, train = registered_model
    assert main(["lineage", "lmforge-test:1", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out

    # Unset in the config (None in the manifest's params): shown as the run resolved them.
    assert "max_steps=300" in text and "strategy=single" in text and "None" not in text
    assert f"seq_len={read_manifest(train)['model_config']['max_seq_len']}" in text
    assert "parameters=1,115,264" in text and "tokens=1,228,800" in text
    assert "final_train_loss=3.21" in text
    assert "kept = 1,234,567" in text and "responses = 2,500,000" in text
    assert "e+0" not in text  # no count in scientific notation anywhere


@pytest.mark.parametrize(
    "params, strategy",
    [
        ({"train.strategy": "None", "run.nproc": "1", "run.nnodes": "1"}, "single"),
        ({"train.strategy": "None", "run.nproc": "2", "run.nnodes": "1"}, "ddp"),
        ({"train.strategy": "None", "run.nproc": "1", "run.nnodes": "2"}, "ddp"),
        ({"train.strategy": "fsdp", "run.nproc": "4", "run.nnodes": "1"}, "fsdp"),
        ({"train.strategy": "None"}, "single"),  # no process counts logged: one process
    ],
)
def test_the_strategy_shown_is_the_configured_one_else_the_default_for_the_processes(
    params, strategy
):
    assert trained_strategy(params) == strategy
