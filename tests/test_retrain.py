"""The model side of the refresh loop, in process: a refresh that adds a WARC file, `retrain`
into one work dir, the gate's decisions, folders no rerun writes, versions that outlive them."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
MODEL = "lmforge-retrain-test"
SHARDS = {"vocab_size": 300}
# A model that learns something in 30 steps, and one that learns nothing (lr ~ 0): the gate
# must tell them apart on the pinned held-out set.
GOOD = {"max_steps": 30, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "progress": False}
WORSE = {**GOOD, "max_steps": 4, "lr": 1e-7}


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def loop(prefect_api, tmp_path_factory):
    """Two refreshes of a two-file crawl (one file each), a retrain after each: the first
    trains well, the second deliberately badly; a third refresh finds nothing new; then a
    retrain that continues from the champion."""
    from lmforge.flows import tracking
    from lmforge.flows.data_refresh import data_refresh
    from lmforge.flows.params import DataRefreshRun, RetrainRun
    from lmforge.flows.retrain import retrain
    from lmforge.model.train import TrainConfig
    from lmforge.tasks.data.sample.corpus import build_sample_corpus
    from lmforge.tasks.tokens.shards import ShardConfig

    root = tmp_path_factory.mktemp("retrain")
    build_sample_corpus(root / "crawl", n_files=2, max_pages=40)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setattr(tracking, "_configured_uri", None)
        refresh_run = DataRefreshRun(
            input=[str(root / "crawl" / "*.warc.gz")], out=str(root / "work" / "dataset"),
            files_per_run=1, runner="threads", workers=1,
        )  # fmt: skip
        run = RetrainRun(dataset=refresh_run.out, work_dir=str(root / "work" / "model"),
                         registered_model_name=MODEL)  # fmt: skip

        def retrain_with(train: dict, **changes):
            return retrain(shards=ShardConfig(**SHARDS), train=TrainConfig(**train),
                           run=run.model_copy(update=changes))  # fmt: skip

        rounds = {"refresh-1": data_refresh(run=refresh_run)}
        rounds["retrain-1"] = retrain_with(GOOD)
        first = Path(rounds["retrain-1"]["checkpoint"])
        rounds["v1-before"] = folder_digest(first)
        rounds["refresh-2"] = data_refresh(run=refresh_run)
        rounds["retrain-2"] = retrain_with(WORSE)
        rounds["refresh-3"] = data_refresh(run=refresh_run)
        champion = MlflowClient().get_model_version_by_alias(MODEL, "champion")
        rounds["champion-tokenizer"] = hashlib.sha256(
            (Path(champion.tags["lmforge.checkpoint"]) / "tokenizer.json").read_bytes()
        ).hexdigest()
        rounds["champion-version"] = champion.version
        rounds["continued"] = retrain_with({**GOOD, "max_steps": 6}, start="champion")
        rounds["v1-after"] = folder_digest(first)
        yield root, rounds


def test_each_refresh_adds_one_file_then_says_nothing_is_new(loop):
    _, rounds = loop
    assert [rounds[f"refresh-{i}"]["counts"]["warc_files"] for i in (1, 2, 3)] == [1, 2, 2]
    assert rounds["retrain-1"]["dataset_version"] == 1
    assert rounds["retrain-2"]["dataset_version"] == 2


def test_the_first_version_is_champion_and_a_worse_one_is_refused(loop):
    _, rounds = loop
    first, second = rounds["retrain-1"], rounds["retrain-2"]
    assert first["outcome"] == "champion"
    assert second["outcome"] == "challenger", second["reason"]
    client = MlflowClient()
    first_version = first["registered_model"].split(":")[1]
    refused = client.get_model_version(MODEL, second["registered_model"].split(":")[1])
    # Compared with version 1, which stayed champion (a later, better version may take over).
    assert refused.tags["lmforge.gate.champion_version"] == first_version
    assert float(refused.tags["lmforge.gate.value"]) > float(
        refused.tags["lmforge.gate.champion_value"]
    )
    assert refused.tags["lmforge.gate.metric"] == "val_bpb"
    assert refused.tags["lmforge.gate.outcome"] == "challenger"


def test_later_rounds_in_the_same_work_dir_leave_version_one_byte_identical(loop):
    _, rounds = loop
    first, second = rounds["retrain-1"], rounds["retrain-2"]
    # Other data and settings: new shards and training folders; version 1's folder untouched.
    assert second["checkpoint"] != first["checkpoint"] and second["shards"] != first["shards"]
    assert rounds["v1-before"] == rounds["v1-after"]


def test_start_champion_continues_from_the_champion_with_its_tokenizer(loop):
    from lmforge.manifest import read_manifest

    _, rounds = loop
    continued = rounds["continued"]
    assert continued["started_from"] == f"{MODEL} version {rounds['champion-version']} (@champion)"
    tokenizer = read_manifest(continued["shards"])["tokenizer"]["sha256"]
    assert tokenizer == rounds["champion-tokenizer"]
    trained = read_manifest(continued["checkpoint"])["params"]["train"]
    assert trained["init_from"]


def test_every_version_loads_from_mlflow_after_the_work_dir_is_deleted(loop, tmp_path):
    from lmforge.flows.registry import version_checkpoint
    from lmforge.model.checkpoint import load_model

    root, _ = loop
    shutil.rmtree(root / "work" / "model")
    versions = MlflowClient().search_model_versions(f"name = '{MODEL}'")
    assert len(versions) >= 3
    for version in versions:
        model = load_model(version_checkpoint(version, tmp_path / f"v{version.version}"))
        with torch.no_grad():
            logits = model(torch.zeros(1, 8, dtype=torch.long))
        assert torch.isfinite(logits).all()


def test_clean_lists_then_deletes_only_folders_no_link_points_at(loop, capsys):
    from lmforge.cli import main

    root, rounds = loop
    work = root / "work" / "pipeline-like"
    # (the retrain work dir is gone by now: clean a copy of the layout it had)
    for stage, count in (("train", 3), ("shards", 2)):
        for i in range(count):
            (work / "stages" / stage / f"folder{i}").mkdir(parents=True)
        (work / stage).symlink_to(Path("stages") / stage / "folder0")
    assert main(["clean", str(work)]) == 0
    listed = capsys.readouterr().out
    assert "would delete" in listed and "--yes" in listed
    assert all((work / "stages" / "train" / f"folder{i}").is_dir() for i in range(3))
    assert main(["clean", str(work), "--yes", "--keep", "1"]) == 0
    left = sorted(p.name for p in (work / "stages" / "train").iterdir())
    assert "folder0" in left and len(left) <= 2
