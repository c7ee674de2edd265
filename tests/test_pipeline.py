"""End to end: a tiny generated crawl through the real `pipeline` flow, checked stage by stage
and in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from lmforge.flows.params import PipelineRun
from lmforge.model.train import TrainConfig
from lmforge.tasks.evaluate.checkpoint import EvalConfig
from lmforge.tasks.tokens.shards import ShardConfig
from lmforge.manifest import read_manifest, verify_outputs
from lmforge.tasks.data.sample.corpus import build_sample_corpus
from lmforge.tasks.data.warc import WarcResponseReader

pytestmark = pytest.mark.slow


def write_blimp(directory: Path) -> Path:
    directory.mkdir()
    pairs = [
        {"sentence_good": "The function returns a list.", "sentence_bad": "The function return a list."},
        {"sentence_good": "These modules are imported.", "sentence_bad": "These modules is imported."},
    ]
    (directory / "agreement.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return directory


EVAL_PROMPT = "A module is"  # the pipeline's `eval` section replaces the default prompts


@pytest.fixture(scope="module")
def pipeline_run(prefect_api, tmp_path_factory, monkeypatch_module):
    from lmforge.flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("e2e")
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    warcs = build_sample_corpus(root / "crawl", n_files=2, max_pages=60)
    run = PipelineRun(
        input=[str(root / "crawl" / "*.warc.gz")],
        work_dir=str(root / "work"),
        blimp=str(write_blimp(root / "blimp")),
    )
    summary = pipeline(
        shards=ShardConfig(vocab_size=400),
        train=TrainConfig(max_steps=12, batch_size=4, seq_len=64),
        eval=EvalConfig(prompts=[EVAL_PROMPT], max_new_tokens=4),
        run=run,
    )
    return summary, Path(run.work_dir), warcs


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_every_stage_writes_a_verified_manifest(pipeline_run):
    _, work, _ = pipeline_run
    for stage, name in [("data", "data_refresh"), ("shards", "build_shards"), ("train", "pretrain"), ("eval", "evaluate")]:
        manifest = read_manifest(work / stage)
        assert manifest["stage"] == name
        assert manifest["inputs"] and manifest["outputs"]
        verify_outputs(work / stage)


def test_data_stage_accounts_for_every_response_record(pipeline_run):
    _, work, warcs = pipeline_run
    responses = sum(1 for warc in warcs for _ in WarcResponseReader(warc))
    kept = pq.read_table(work / "data" / "docs").num_rows
    removed = pq.read_table(work / "data" / "removed")
    assert kept > 0 and removed.num_rows > 0
    assert kept + removed.num_rows == responses
    reasons = set(removed.column("reason").to_pylist())
    assert any("duplicate" in r for r in reasons), reasons
    duplicates = removed.filter(removed.column("duplicate_of").is_valid())
    kept_ids = set(pq.read_table(work / "data" / "docs", columns=["id"]).column("id").to_pylist())
    assert set(duplicates.column("duplicate_of").to_pylist()) <= kept_ids
    manifest = read_manifest(work / "data")
    assert {Path(i["path"]).name for i in manifest["inputs"]} == {w.name for w in warcs}


def test_evaluation_reports_loss_bits_per_byte_and_blimp(pipeline_run):
    summary, work, _ = pipeline_run
    results = json.loads((work / "eval" / "results.json").read_text())
    assert results["val_loss"] > 0 and results["val_bpb"] > 0
    assert 0.0 <= results["blimp_acc"] <= 1.0 and set(results["blimp"]) == {"agreement"}
    assert [sample["prompt"] for sample in results["samples"]] == [EVAL_PROMPT]
    assert summary["val_loss"] == pytest.approx(results["val_loss"])


def test_mlflow_has_a_parent_run_with_a_child_per_stage_and_their_inputs(pipeline_run):
    summary, work, _ = pipeline_run
    assert summary["mlflow_tracking_uri"] == f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(summary["mlflow_tracking_uri"])
    parent = mlflow.get_run(summary["mlflow_run_id"])
    assert parent.data.tags["prefect.flow_run_id"]
    children = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    by_stage = {run.data.tags["lmforge.stage"]: run for run in children}
    assert set(by_stage) == {"data_refresh", "build_shards", "pretrain", "evaluate"}
    for stage, run in by_stage.items():
        assert run.info.status == "FINISHED", stage
        assert run.data.tags["prefect.flow_run_id"] != parent.data.tags["prefect.flow_run_id"]
        assert run.inputs.dataset_inputs, f"{stage} logged no dataset inputs"
    data_inputs = by_stage["data_refresh"].inputs.dataset_inputs
    assert all(d.dataset.digest for d in data_inputs)
    shard_input = by_stage["build_shards"].inputs.dataset_inputs[0]
    assert shard_input.dataset.name == "data_refresh"
    assert "loss" in by_stage["pretrain"].data.metrics
    assert "val_bpb" in by_stage["evaluate"].data.metrics
