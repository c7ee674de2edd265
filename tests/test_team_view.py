"""What a team sees of a run: training progress in the flow run's logs, names that tell runs
apart in Prefect and MLflow alike, one metric name per quantity, system metrics, evaluation
scores on the registered version, and links between a flow run and its MLflow run both ways."""

from __future__ import annotations

import logging
import threading
import time

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_UI_URL, temporary_settings

from lmforge.flows import tracking
from lmforge.flows.data_refresh import dataset_metrics
from lmforge.flows.deployments import deployment_name
from lmforge.flows.evaluate import evaluate
from lmforge.flows.params import DataRefreshRun, EvalRun, PipelineRun, PretrainRun, ShardsRun
from lmforge.flows.pretrain import TrainingLog, pretrain, training_line
from lmforge.flows.reports import mlflow_run_markdown, publish_mlflow_run
from lmforge.flows.stages import STAGES
from lmforge.manifest import (
    build_manifest,
    describe_input,
    stage_output,
    stage_version,
    write_manifest,
)
from lmforge.model.config import ModelSpec
from lmforge.model.train import TrainConfig, TrainJob
from lmforge.tasks.evaluate.checkpoint import EvalConfig
from lmforge.tasks.tokens.shards import ShardConfig, build_shards


# --- training lines --------------------------------------------------------------------------


def test_a_training_line_shows_step_loss_throughput_mfu_and_time_left():
    metrics = {"loss": 3.41234, "tokens_per_s": 52_310.0, "tokens": 200 * 8192.0, "mfu": 0.3121}
    line = training_line(200, 2000, metrics)
    # 1800 steps of 8192 tokens at 52,310 tokens/s: 282 s.
    assert line == "step 200/2000: loss 3.4123, 52,310 tokens/s, MFU 31.2%, ETA 4m42s"


def test_a_training_line_without_a_known_peak_says_so_and_a_finished_run_has_nothing_left():
    line = training_line(10, 10, {"loss": 2.0, "tokens_per_s": 100.0, "tokens": 640.0})
    assert line.endswith("MFU n/a, ETA 0s")
    hours = training_line(1, 1000, {"loss": 2.0, "tokens_per_s": 1.0, "tokens": 10.0})
    assert hours.endswith("ETA 2h46m")  # 999 steps x 10 tokens at 1 token/s


def test_training_log_writes_a_line_per_report_and_per_validation_loss():
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test-training-log")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    log = TrainingLog(logger, max_steps=20)
    log(10, {"loss": 3.0, "lr": 1e-3, "tokens_per_s": 1000.0, "tokens": 10_000.0})
    log(10, {"val_loss": 3.25})
    assert records == [
        "step 10/20: loss 3.0000, 1,000 tokens/s, MFU n/a, ETA 10s",
        "step 10/20: val_loss 3.2500",
    ]


# --- run names -------------------------------------------------------------------------------


@pytest.fixture
def dataset_chain(tmp_path):
    """A data folder at version 2 whose shards were built from version 1, and a training output
    of 200 steps on those shards."""
    warcs = [tmp_path / f"crawl-{i}.warc.gz" for i in range(2)]
    for warc in warcs:
        warc.write_bytes(warc.name.encode())
    data = tmp_path / "data"
    with stage_version(data, "data_refresh", {}, inputs=[warcs[0]]) as writer:
        (writer.path / "docs").mkdir()
        (writer.path / "docs" / "part-v00001.txt").write_text("one")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part.bin").write_bytes(b"tokens")
    write_manifest(shards, build_manifest(shards, "build_shards", {}, [describe_input(data)], {}))
    with stage_version(data, "data_refresh", {}, inputs=[warcs[1]]) as writer:
        (writer.path / "docs").mkdir()
        (writer.path / "docs" / "part-v00002.txt").write_text("two")
    train = tmp_path / "train"
    train.mkdir()
    (train / "model.safetensors").write_bytes(b"weights")
    job = TrainJob(shards_dir=str(shards), out_dir=str(train), model=ModelSpec(),
                   train=TrainConfig(max_steps=200))  # fmt: skip
    write_manifest(train, build_manifest(
        train, "pretrain", job.model_dump(mode="json"), [describe_input(shards)], {"steps": 200}
    ))  # fmt: skip
    return data, shards, train


def test_runs_are_named_by_stage_preset_steps_and_the_dataset_version_they_read(dataset_chain):
    data, shards, train = dataset_chain
    training = {"model": ModelSpec(), "train": TrainConfig(max_steps=200)}
    # The shards were built from version 1 (an earlier manifest, found by its digest).
    pretrain_run = {**training, "run": PretrainRun(shards=str(shards))}
    assert tracking.run_name("pretrain", pretrain_run) == "pretrain tiny 200 steps data-v1"
    shards_run = {"shards": ShardConfig(vocab_size=8000), "run": ShardsRun(data=str(data))}
    assert tracking.run_name("build_shards", shards_run) == "build_shards vocab 8000 data-v2"
    refresh = {"run": DataRefreshRun(input=["a.warc.gz", "b.warc.gz"], out=str(data))}
    assert tracking.run_name("data_refresh", refresh) == "data_refresh 2 inputs -> data-v3"
    # Recorded as reused (the pipeline's cache), a refresh adds nothing: the folder as it is.
    assert tracking.run_name("data_refresh", refresh, reused=True) == (
        "data_refresh 2 inputs -> data-v2"
    )
    new = str(data.parent / "new")
    crawl = {"run": DataRefreshRun(crawl="CC-MAIN-2025-08", max_files=3, out=new)}
    assert tracking.run_name("data_refresh", crawl) == (
        "data_refresh CC-MAIN-2025-08 3 files -> new-v1"
    )
    evaluation = {"run": EvalRun(checkpoint=str(train), shards=str(shards))}
    assert tracking.run_name("evaluate", evaluation) == "evaluate tiny 200 steps data-v1"
    pipeline = {**training, "run": PipelineRun()}
    assert tracking.run_name("pipeline", pipeline) == "pipeline tiny 200 steps sample"
    # JSON values (what a deployment or a stage run's params hold) name the run the same way.
    as_json = {key: value.model_dump(mode="json") for key, value in pretrain_run.items()}
    assert tracking.run_name("pretrain", as_json) == "pretrain tiny 200 steps data-v1"


@flow(name="records-a-reused-refresh")
def record_a_reused_refresh(out: str) -> str:
    with tracking.stage_run("data_refresh", {"run": {"input": [], "out": out}}) as run:
        return run.info.run_name


def test_a_data_run_that_another_flow_records_names_the_version_the_folder_holds(
    prefect_api, local_tracking, dataset_chain
):
    data, _, _ = dataset_chain
    assert record_a_reused_refresh(str(data)) == "data_refresh sample -> data-v2"


def test_a_run_whose_folders_are_missing_or_unreadable_is_still_named(tmp_path):
    training = {"model": ModelSpec(preset="small"), "train": TrainConfig(max_steps=50)}
    missing = {**training, "run": PretrainRun(shards=str(tmp_path / "nowhere"))}
    assert tracking.run_name("pretrain", missing) == "pretrain small 50 steps"
    broken = tmp_path / "shards"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert tracking.run_name("pretrain", {**training, "run": PretrainRun(shards=str(broken))}) == (
        "pretrain small 50 steps"
    )
    assert tracking.run_name("evaluate", {}) == "evaluate"


def test_deployments_are_named_after_their_commands_so_no_two_share_a_name():
    names = {stage.name: deployment_name(stage.command) for stage in STAGES if stage.deployed}
    assert {
        "pipeline": "lmforge-run",
        "data_refresh": "lmforge-data-refresh",
        "build_shards": "lmforge-shards-build",
        "pretrain": "lmforge-train",
        "evaluate": "lmforge-eval",
    }.items() <= names.items()
    assert len(set(names.values())) == len(names)


# --- metrics ---------------------------------------------------------------------------------


def test_a_dataset_logs_each_quantity_under_one_name():
    step = {"docs_in": 10, "docs_out": 8, "bytes_in": 1000, "bytes_out": 800,
            "dropped": {"http_404": 2}}  # fmt: skip
    added = {
        "warc_files": 1, "responses": 10, "kept": 7, "removed": 3, "read_errors": 0,
        "removed_by_stage": {"read": 2, "dedup": 1},
        "removed_by_reason": {"read": {"read:http_404": 2}, "dedup": {"exact_duplicate": 1}},
        "languages": {"en": 7}, "bytes_in": 1000, "bytes_out": 700,
        "steps": {"read": step}, "removed_by_language": {"und": {"read:http_404": 2}},
        "dedup": {"documents": 8, "exact_duplicates": 1, "near_duplicates": 0, "clusters": 1,
                  "prior_documents": 5, "candidate_pairs": 1, "verified_pairs": 1,
                  "largest_cluster": 2},
    }  # fmt: skip
    totals = {**added, "warc_files": 2, "responses": 25, "kept": 15, "removed": 10}
    manifest = {"stage": "data_refresh", "version": 2, "params": {}, "counts": totals,
                "version_counts": added}  # fmt: skip

    metrics = dataset_metrics(manifest)

    # This refresh's funnel, by step ...
    assert metrics["docs_in/read"] == 10 and metrics["docs_out/dedup"] == 7
    assert metrics["removed/read/http_404"] == 2 and metrics["lang/en"] == 7
    assert metrics["removed_by_language/und/read/http_404"] == 2
    assert metrics["dedup/clusters"] == 1 and metrics["dedup/prior_documents"] == 5
    # ... and the dataset after it, under the names `lmforge lineage` reads.
    assert (metrics["kept"], metrics["responses"], metrics["dataset_version"]) == (15, 25, 2)
    # Never a flattened copy of a count that another name holds.
    flattened = ("steps.", "removed_by_stage.", "removed_by_reason.", "languages.", "dedup.")
    assert not [name for name in metrics if name.startswith(flattened)]
    assert "dedup/documents" not in metrics and "bytes_in" not in metrics


@pytest.fixture
def local_tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(tracking, "_configured_uri", None)
    tracking.configure_tracking(tmp_path)
    return uri


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


def test_stage_runs_log_system_metrics_and_stop_the_monitor_when_they_end(
    local_tracking, monkeypatch
):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with tracking.stage_run("pretrain", {}) as run:
        assert monitor_threads()
        time.sleep(1.5)
    assert not monitor_threads()
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_a_run_ends_at_once_at_the_default_sampling_interval_and_can_be_left_without(
    local_tracking, monkeypatch
):
    started = time.monotonic()
    with tracking.stage_run("pretrain", {}):
        pass  # the monitor waits 10 s between samples: ending must not wait for it
    assert time.monotonic() - started < 5 and not monitor_threads()
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    with tracking.stage_run("pretrain", {}) as run:
        assert not monitor_threads()
    assert not MlflowClient().get_run(run.info.run_id).data.metrics


def test_the_experiment_is_a_model_training_one_unless_someone_chose_its_kind(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(tracking, "_configured_uri", None)
    tracking.configure_tracking(tmp_path)
    experiment = mlflow.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    client = MlflowClient()
    client.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", "finetuning")
    monkeypatch.setattr(tracking, "_configured_uri", None)
    tracking.configure_tracking(tmp_path)
    experiment = mlflow.get_experiment_by_name(tracking.EXPERIMENT_NAME)
    assert experiment.tags["mlflow.experimentKind"] == "finetuning"


# --- links -----------------------------------------------------------------------------------


def test_a_local_store_is_named_in_words_and_a_server_linked_in_its_classic_view():
    local = mlflow_run_markdown("sqlite:////w/mlflow.db", "1", "abcdef0123456789")
    assert "](" not in local and "`abcdef0123456789`" in local
    assert "mlflow ui --backend-store-uri sqlite:////w/mlflow.db" in local
    served = mlflow_run_markdown("http://mlflow:5000/", "1", "abcdef0123456789", "pretrain tiny")
    url = "http://mlflow:5000/#/experiments/1/runs/abcdef0123456789?workflowType=machine_learning"
    assert served == f"[pretrain tiny]({url})"


@flow
def publish_both_kinds() -> str:
    from prefect.runtime import flow_run

    publish_mlflow_run("build_shards", "https://mlflow.example", "3", "f00d", "build_shards x")
    publish_mlflow_run("evaluate", "sqlite:////w/mlflow.db", "3", "beef", "evaluate x")
    return str(flow_run.id)


def read_artifacts(flow_run_id: str) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: artifact for artifact in found}


def test_the_flow_run_links_to_its_mlflow_run_or_says_where_a_local_store_keeps_it(prefect_api):
    artifacts = read_artifacts(publish_both_kinds())
    url = "https://mlflow.example/#/experiments/3/runs/f00d?workflowType=machine_learning"
    assert artifacts["build-shards-mlflow-run"].data == f"MLflow run: [build_shards x]({url})"
    local = artifacts["evaluate-mlflow-run"].data
    assert "](" not in local and "`beef`" in local and "sqlite:////w/mlflow.db" in local


@flow
def run_a_stage_under_a_served_prefect() -> str:
    with tracking.stage_run("build_shards", {}) as run:
        return run.info.run_id


def test_the_mlflow_run_description_links_to_its_flow_run(prefect_api, local_tracking):
    with temporary_settings(updates={PREFECT_UI_URL: "http://prefect.example:4200"}):
        run_id = run_a_stage_under_a_served_prefect()
    tags = MlflowClient().get_run(run_id).data.tags
    url = tags["prefect.flow_run_url"]
    assert url.startswith("http://prefect.example:4200/runs/flow-run/")
    name = tags["prefect.flow_run_name"]
    assert tags["mlflow.note.content"] == f"Prefect flow run: [{name}]({url})"


# --- a trained and evaluated model, seen from Prefect and MLflow ------------------------------

TEXTS = [f"the {animal} sat on mat number {i} and the {animal} slept" for i in range(60)
         for animal in ("cat", "dog")]  # fmt: skip


@pytest.fixture(scope="module")
def trained_and_evaluated(prefect_api, tmp_path_factory):
    """A data folder, shards built from it, a 4-step `pretrain` flow run (registered as
    lmforge-tiny) and an `evaluate` flow run of its checkpoint, in one SQLite store."""
    root = tmp_path_factory.mktemp("team-view")
    with stage_output(root / "data", "data_refresh", params={}) as stage:
        (stage.path / "docs").mkdir()
        ids = [f"doc-{i}" for i in range(len(TEXTS))]
        table = pa.table({"id": ids, "url": ids, "text": TEXTS, "lang": ["en"] * len(TEXTS)})
        pq.write_table(table, stage.path / "docs" / "part-00000.parquet")
    build_shards(root / "data", root / "shards", ShardConfig(vocab_size=300, val_fraction=0.3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setattr(tracking, "_configured_uri", None)
        trained = pretrain(
            train=TrainConfig(max_steps=4, batch_size=2, seq_len=16, log_every=2, eval_every=2,
                              checkpoint_every=100, device="cpu", progress=False),
            run=PretrainRun(shards=str(root / "shards"), out=str(root / "train")),
            return_state=True,
        )  # fmt: skip
        evaluated = evaluate(
            eval=EvalConfig(seq_len=16, max_val_tokens=64, batch_size=2, prompts=("the cat",),
                            max_new_tokens=2),
            run=EvalRun(checkpoint=str(root / "train"), shards=str(root / "shards")),
            return_state=True,
        )  # fmt: skip
        uri = mlflow.get_tracking_uri()
    assert trained.is_completed() and evaluated.is_completed()
    APILogHandler().flush()  # the logs reach the API before the tests read them
    return {
        "uri": uri,
        "pretrain": trained.state_details.flow_run_id,
        "evaluate": evaluated.state_details.flow_run_id,
        "scores": evaluated.result(),
    }


def flow_run_logs(flow_run_id) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [log.message for log in logs]


def flow_run_name(flow_run_id) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).name


def stage_mlflow_run(uri: str, stage: str):
    (run,) = MlflowClient(uri).search_runs(
        [mlflow.get_experiment_by_name(tracking.EXPERIMENT_NAME).experiment_id],
        filter_string=f"tags.`lmforge.stage` = '{stage}'",
    )
    return run


def test_training_progress_reaches_the_flow_runs_logs_every_log_every_steps(
    trained_and_evaluated,
):
    lines = [m for m in flow_run_logs(trained_and_evaluated["pretrain"]) if m.startswith("step ")]
    progress = [line for line in lines if "tokens/s" in line]
    assert [line.split(":")[0] for line in progress] == ["step 2/4", "step 4/4"]
    assert all("loss " in line and "MFU " in line and "ETA " in line for line in progress)
    assert [line for line in lines if "val_loss" in line][0].startswith("step 2/4: val_loss ")


def test_flow_runs_and_their_mlflow_runs_share_a_name_that_tells_them_apart(
    trained_and_evaluated,
):
    uri = trained_and_evaluated["uri"]
    for stage, expected in (("pretrain", "pretrain tiny 4 steps data-v1"),
                            ("evaluate", "evaluate tiny 4 steps data-v1")):  # fmt: skip
        assert flow_run_name(trained_and_evaluated[stage]) == expected
        assert stage_mlflow_run(uri, stage).info.run_name == expected


def test_every_stage_flow_run_links_its_mlflow_run(trained_and_evaluated):
    for stage in ("pretrain", "evaluate"):
        artifacts = read_artifacts(str(trained_and_evaluated[stage]))
        text = artifacts[f"{stage}-mlflow-run"].data
        run = stage_mlflow_run(trained_and_evaluated["uri"], stage)
        assert run.info.run_id in text and "mlflow ui --backend-store-uri" in text


def test_the_training_runs_counts_meet_its_curves_at_the_last_step(trained_and_evaluated):
    client = MlflowClient(trained_and_evaluated["uri"])
    run = stage_mlflow_run(trained_and_evaluated["uri"], "pretrain")
    tokens = client.get_metric_history(run.info.run_id, "tokens")
    assert sorted(point.step for point in tokens) == [2, 4, 4]  # no final count at step 0
    assert len({point.value for point in tokens if point.step == 4}) == 1


def test_evaluation_scores_are_attached_to_the_registered_version(trained_and_evaluated):
    client = MlflowClient(trained_and_evaluated["uri"])
    scores = trained_and_evaluated["scores"]
    version = client.get_model_version("lmforge-tiny", "1")
    evaluation = stage_mlflow_run(trained_and_evaluated["uri"], "evaluate")
    assert version.tags["lmforge.eval_run_id"] == evaluation.info.run_id
    assert float(version.tags["val_bpb"]) == scores["val_bpb"]
    assert float(version.tags["val_loss"]) == scores["val_loss"]
    model_id = version.source.removeprefix("models:/")
    linked = {m.key: (m.value, m.run_id) for m in client.get_logged_model(model_id).metrics}
    assert linked["val_bpb"] == (pytest.approx(scores["val_bpb"]), evaluation.info.run_id)
