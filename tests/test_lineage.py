"""End to end on a tiny crawl: the pipeline registers its model, an evaluation with a benchmark
logs per-task metrics and tables, and `lmforge lineage` walks from the registered version back
to the WARC files, everything read from MLflow and the manifests."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lmforge.cli import main
from lmforge.flows.params import EvalRun, PipelineRun
from lmforge.model.train import TrainConfig
from lmforge.tasks.evaluate.checkpoint import EvalConfig
from lmforge.tasks.tokens.shards import ShardConfig
from lmforge.manifest import read_manifest, sha256_file
from lmforge.tasks.data.sample.corpus import build_sample_corpus

pytestmark = pytest.mark.slow


def write_hellaswag(path: Path) -> Path:
    record = {
        "activity_label": "Programming", "ctx_a": "The function returns", "ctx_b": "a",
        "endings": ["list of values.", "purple elephant.", "[header] banana", "seven."],
    }
    path.write_text("".join(json.dumps({**record, "label": i % 4}) + "\n" for i in range(6)))
    return path


@pytest.fixture(scope="module")
def evaluated_pipeline(prefect_api, tmp_path_factory):
    from lmforge.flows import tracking
    from lmforge.flows.evaluate import evaluate
    from lmforge.flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("lineage")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setattr(tracking, "_configured_uri", None)
        warcs = build_sample_corpus(root / "crawl", n_files=2, max_pages=40)
        run = PipelineRun(input=[str(root / "crawl" / "*.warc.gz")], work_dir=str(root / "work"))
        summary = pipeline(shards=ShardConfig(vocab_size=400),
                           train=TrainConfig(max_steps=6, batch_size=4, seq_len=32), run=run)
        work = Path(run.work_dir)
        results = evaluate(
            eval=EvalConfig(
                max_val_tokens=256, max_new_tokens=2, num_fewshot=1,
                tasks={"hellaswag": str(write_hellaswag(root / "hellaswag_val.jsonl"))},
            ),
            run=EvalRun(
                checkpoint=str(work / "train"), shards=str(work / "shards"),
                out=str(work / "eval-bench"),
            ),
        )
        yield summary, work, warcs, results


def test_training_registers_the_model_with_the_candidate_alias(evaluated_pipeline):
    summary, work, _, _ = evaluated_pipeline
    mlflow.set_tracking_uri(summary["mlflow_tracking_uri"])
    version = MlflowClient().get_model_version_by_alias("lmforge-tiny", "candidate")
    # The training folder itself, which no later run writes (`work/train` links to the newest).
    assert version.tags["lmforge.checkpoint"] == summary["checkpoint"]
    assert Path(summary["checkpoint"]) == (work / "train").resolve()


def test_benchmark_scores_go_to_mlflow_as_metrics_and_tables(evaluated_pipeline):
    summary, _, _, results = evaluated_pipeline
    mlflow.set_tracking_uri(summary["mlflow_tracking_uri"])
    run_id = MlflowClient().get_model_version_by_alias("lmforge-tiny", "candidate").tags[
        "lmforge.eval_run_id"
    ]
    run = mlflow.get_run(run_id)
    hellaswag = results["benchmarks"]["hellaswag"]
    assert run.data.metrics["hellaswag.acc"] == pytest.approx(hellaswag["acc"])
    assert {"hellaswag.acc_norm", "hellaswag.acc_stderr"} <= set(run.data.metrics)
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "benchmarks")}
    assert artifacts == {"benchmarks/results_table.json", "benchmarks/results_table.md"}


def test_lineage_walks_from_the_model_version_to_the_warc_files(evaluated_pipeline, capsys):
    summary, work, warcs, results = evaluated_pipeline
    uri = summary["mlflow_tracking_uri"]
    assert main(["lineage", "lmforge-tiny@candidate", "--json", "--tracking-uri", uri]) == 0
    lineage = json.loads(capsys.readouterr().out)

    assert lineage["model"]["name"] == "lmforge-tiny" and "candidate" in lineage["model"]["aliases"]
    scores = lineage["evaluation"]["scores"]
    assert scores["hellaswag.acc"] == pytest.approx(results["benchmarks"]["hellaswag"]["acc"])
    assert lineage["training"]["params"]["max_steps"] == "6"
    assert lineage["training"]["checkpoint"]["manifest_matches"]
    shards = lineage["shards"]
    assert shards["path"] == summary["shards"] and shards["manifest_matches"]
    assert shards["tokenizer"]["sha256"] == read_manifest(work / "shards")["tokenizer"]["sha256"]
    assert shards["run_id"] and lineage["data"]["run_id"]
    assert lineage["data"]["path"] == summary["data"] and lineage["data"]["manifest_matches"]
    assert lineage["data"]["filter_statistics"]["kept"] > 0
    inputs = {Path(i["path"]).name: i["sha256"] for i in lineage["inputs"]}
    assert inputs == {w.name: sha256_file(w) for w in warcs}

    assert main(["lineage", "lmforge-tiny:1", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    for line_start in ("model       lmforge-tiny version 1", "evaluation  run", "training    run",
                       "shards      ", "data        ", "inputs      2 WARC files"):
        assert line_start in text
    assert "DIFFERS" not in text


def test_lineage_of_an_unregistered_model_is_a_clear_error(evaluated_pipeline, capsys):
    summary, _, _, _ = evaluated_pipeline
    uri = summary["mlflow_tracking_uri"]
    assert main(["lineage", "no-such-model", "--tracking-uri", uri]) == 2
    assert "no registered model is called 'no-such-model'" in capsys.readouterr().err
