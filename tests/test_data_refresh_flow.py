"""The `data_refresh` flow: results independent of the task runner, per-file caching across a
crash, progress, and the statistics, names and log lines people see in MLflow and on the Prefect
flow run."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from test_data_refresh import write_crawl

import lmforge
from lmforge.flows import data_refresh as flow_module
from lmforge.flows.data_refresh import data_refresh, file_cache_key, file_progress
from lmforge.flows.params import DataRefreshRun
from lmforge.manifest import read_manifest
from lmforge.tasks.data.config import DataConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crawl_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("crawl")
    write_crawl(directory)
    return directory


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """Each flow run logs to its own SQLite store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr("lmforge.flows.tracking._configured_uri", None)
    return uri


def refresh(crawl_dir, out, **overrides):
    run = DataRefreshRun(input=[str(crawl_dir / "*.warc.gz")], out=str(out), **overrides)
    return data_refresh(run=run)


def dataset_fingerprint(out):
    """What must not depend on how the work was scheduled."""
    manifest = read_manifest(out)
    docs = [doc_id for part in sorted((out / "docs").rglob("*.parquet"))
            for doc_id in pq.read_table(part, columns=["id"]).column("id").to_pylist()]  # fmt: skip
    outputs = {item["path"]: item["sha256"] for item in manifest["outputs"]}
    return sorted(docs), manifest["counts"], outputs


def test_results_do_not_depend_on_the_runner_or_the_worker_count(
    local_run, prefect_api, tracking, crawl_dir, tmp_path
):
    from distributed import LocalCluster

    threads = refresh(crawl_dir, tmp_path / "threads", runner="threads", workers=1)
    # A real scheduler and two workers; in-process workers keep the test fast.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:  # fmt: skip
        dask = refresh(
            crawl_dir, tmp_path / "dask", runner="dask", workers=2,
            dask_address=cluster.scheduler_address,
        )  # fmt: skip
    local_out, local, _, _, _ = local_run
    assert local["counts"]["kept"] > 0
    expected = dataset_fingerprint(local_out)
    assert dataset_fingerprint(tmp_path / "threads") == expected
    assert dataset_fingerprint(tmp_path / "dask") == expected
    assert threads["counts"] == dask["counts"] == local["counts"]


def test_a_rerun_after_a_crash_skips_the_files_already_processed(
    prefect_api, tracking, crawl_dir, tmp_path, monkeypatch
):
    processed: list[str] = []
    real = flow_module.process_warc_file

    def crash_on_second_file(path, config, staging, extraction_cache=None):
        if path.name == "crawl-00001.warc.gz":
            raise OSError("simulated crash")
        processed.append(path.name)
        return real(path, config, staging)

    monkeypatch.setattr(flow_module, "process_warc_file", crash_on_second_file)
    # No retries: the crash must stop this run.
    monkeypatch.setattr(flow_module, "process_warc_file_task",
                        flow_module.process_warc_file_task.with_options(retries=0))  # fmt: skip
    out = tmp_path / "data"
    with pytest.raises(OSError, match="simulated crash"):
        refresh(crawl_dir, out, runner="threads", workers=2)
    assert processed == ["crawl-00000.warc.gz"]
    assert not (out / "manifest.json").exists()
    # The finished file's result is recorded as JSON beside its staged files, nothing pickled.
    results = tmp_path / ".data.staging" / flow_module.RESULTS_DIR
    (record,) = results.iterdir()
    assert record.name == file_cache_key(crawl_dir / "crawl-00000.warc.gz", DataConfig()) + ".json"
    assert json.loads(record.read_text())["warc_file"] == "crawl-00000.warc.gz"

    def count_calls(path, config, staging, extraction_cache=None):
        processed.append(path.name)
        return real(path, config, staging)

    processed.clear()
    monkeypatch.setattr(flow_module, "process_warc_file", count_calls)
    manifest = refresh(crawl_dir, out, runner="threads", workers=2)
    assert processed == ["crawl-00001.warc.gz"]  # the first file came from the cache
    assert manifest["counts"]["warc_files"] == 2
    assert not (tmp_path / ".data.staging").exists()  # a finished dataset retires the cache

    processed.clear()
    refresh(crawl_dir, tmp_path / "again", runner="threads", workers=2)
    assert sorted(processed) == ["crawl-00000.warc.gz", "crawl-00001.warc.gz"]


def test_a_failing_file_is_retried_before_the_run_fails(
    prefect_api, tracking, crawl_dir, tmp_path, monkeypatch
):
    attempts: list[str] = []
    real = flow_module.process_warc_file

    def flaky(path, config, staging, extraction_cache=None):
        attempts.append(path.name)
        if attempts.count(path.name) == 1:
            raise ConnectionError("transient read error")
        return real(path, config, staging)

    monkeypatch.setattr(flow_module, "process_warc_file", flaky)
    no_delay = flow_module.process_warc_file_task.with_options(retry_delay_seconds=0)
    monkeypatch.setattr(flow_module, "process_warc_file_task", no_delay)
    manifest = refresh(crawl_dir, tmp_path / "data", runner="threads", workers=1)
    assert manifest["counts"]["warc_files"] == 2
    assert sorted(attempts) == ["crawl-00000.warc.gz"] * 2 + ["crawl-00001.warc.gz"] * 2
    assert flow_module.process_warc_file_task.retries >= 1


def test_the_cache_key_follows_file_content_config_and_code(tmp_path, monkeypatch):
    warc = tmp_path / "a.warc.gz"
    warc.write_bytes(b"first")
    key = file_cache_key(warc, DataConfig())
    assert file_cache_key(warc, DataConfig()) == key
    assert file_cache_key(warc, DataConfig(min_lang_score=0.5)) != key
    warc.write_bytes(b"second")
    assert file_cache_key(warc, DataConfig()) != key
    changed = file_cache_key(warc, DataConfig())
    monkeypatch.setattr(flow_module, "code_version", lambda: "0.0.0+other")
    assert file_cache_key(warc, DataConfig()) != changed


@pytest.fixture(scope="module")
def local_run(prefect_api, crawl_dir, tmp_path_factory):
    """The default runner (a process per worker), watched by a progress listener; the dataset
    folder, its manifest, what the listener saw, the MLflow store and the flow run's id."""
    root = tmp_path_factory.mktemp("local-run")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    seen: list[tuple[int, int, str]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setattr("lmforge.flows.tracking._configured_uri", None)
        with file_progress(lambda done, total, name: seen.append((done, total, name))):
            run = DataRefreshRun(input=[str(crawl_dir / "*.warc.gz")], out=str(root / "data"),
                                 runner="local", workers=2)  # fmt: skip
            state = data_refresh(run=run, return_state=True)
    APILogHandler().flush()  # the flow run's logs reach the API before the tests read them
    return root / "data", state.result(), seen, uri, state.state_details.flow_run_id


def data_refresh_mlflow_run(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lmforge")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`lmforge.stage` = 'data_refresh'"
    )
    return run


def test_progress_reaches_listeners_file_by_file(local_run):
    _, _, seen, _, _ = local_run
    assert [(done, total) for done, total, _ in seen] == [(1, 2), (2, 2)]
    assert sorted(name for _, _, name in seen) == ["crawl-00000.warc.gz", "crawl-00001.warc.gz"]


def test_each_finished_file_gets_a_line_in_the_refresh_flow_runs_logs(local_run):
    _, manifest, _, _, flow_run_id = local_run
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    lines = sorted(log.message for log in logs if "files done" in log.message)
    assert len(lines) == 2
    assert [line.split(":")[0] for line in lines] == ["crawl-00000.warc.gz", "crawl-00001.warc.gz"]
    assert {line.rsplit("; ", 1)[1] for line in lines} == {"1 of 2 files done", "2 of 2 files done"}
    responses = sum(int(line.split(": ")[1].split()[0].replace(",", "")) for line in lines)
    assert responses == manifest["counts"]["responses"]


def test_the_flow_run_and_its_mlflow_run_are_named_by_source_and_dataset_version(local_run):
    _, _, _, uri, flow_run_id = local_run
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(flow_run_id).name
    assert name == "data_refresh *.warc.gz -> data-v1"
    assert data_refresh_mlflow_run(uri).info.run_name == name


def test_mlflow_gets_per_step_metrics_languages_and_charts(local_run):
    _, manifest, _, uri, _ = local_run
    client = MlflowClient(uri)
    run = data_refresh_mlflow_run(uri)
    metrics = run.data.metrics
    counts = manifest["counts"]
    assert metrics["docs_in/read"] == counts["responses"]
    assert metrics["docs_out/dedup"] == counts["kept"]
    gopher_quality = counts["removed_by_stage"].get("gopher_quality", 0)
    assert metrics["docs_in/gopher_quality"] - metrics["docs_out/gopher_quality"] == gopher_quality
    assert metrics["removed/read/http_404"] == 1
    assert metrics["bytes_in/read"] == counts["bytes_in"]
    assert {f"lang/{lang}" for lang in counts["languages"]} <= set(metrics)
    assert metrics["kept"] == counts["kept"] and metrics["dataset_version"] == 1
    # One name per quantity: no flattened copy of the manifest's counts beside the funnel.
    flattened = ("steps.", "removed_by_stage.", "removed_by_reason.", "languages.", "dedup.")
    assert not [name for name in metrics if name.startswith(flattened)]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/funnel.png", "plots/languages.png"}
    assert run.data.tags["lmforge.code_version"].startswith(lmforge.__version__)


def test_the_flow_run_shows_a_funnel_table_a_report_and_finished_progress(local_run):
    _, manifest, _, _, _ = local_run
    with get_client(sync_client=True) as client:
        def latest(key):
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key])), limit=50)  # fmt: skip
            return max(found, key=lambda a: a.created)

        table = latest("data-refresh-funnel")
        report = latest("data-refresh-report")
        progress = latest("data-refresh-files")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows[0]["step"] == "read" and rows[0]["docs_in"] == manifest["counts"]["responses"]
    assert rows[-1]["step"] == "dedup" and rows[-1]["docs_out"] == manifest["counts"]["kept"]
    assert "## Funnel" in report.data and "## Languages kept" in report.data
    assert "mlflow ui --backend-store-uri" in report.data
    assert float(progress.data) == 100.0


def test_a_second_refresh_into_the_same_directory_adds_a_version_with_only_new_files(
    prefect_api, tracking, crawl_dir, tmp_path
):
    first_file, second_file = sorted(crawl_dir.glob("*.warc.gz"))
    out = tmp_path / "data"
    data_refresh(run=DataRefreshRun(input=[str(first_file)], out=str(out), runner="threads"))
    both = DataRefreshRun(input=[str(first_file), str(second_file)], out=str(out), runner="threads")
    second = data_refresh(run=both)
    assert second["version"] == 2 and second["parent_version"]["version"] == 1
    assert second["version_counts"]["warc_files"] == 1  # the first file was in the ledger
    assert len(second["inputs"]) == 2
    from_scratch = refresh(crawl_dir, tmp_path / "scratch", runner="threads")
    assert dataset_fingerprint(out)[0] == dataset_fingerprint(tmp_path / "scratch")[0]
    assert second["counts"]["kept"] == from_scratch["counts"]["kept"]
    again_state = data_refresh(run=both, return_state=True)
    again = again_state.result()
    assert again == read_manifest(out) and again["version"] == 2  # nothing new: no version 3
    with get_client(sync_client=True) as client:
        again_run = client.read_flow_run(again_state.state_details.flow_run_id)
    assert again_run.name == f"data_refresh 2 inputs -> {out.name}-v2 (nothing new)"

    # The second refresh's run: the funnel of the file it added, the dataset it left.
    client = MlflowClient(tracking)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("lmforge").experiment_id],
        filter_string=f"attributes.run_name = 'data_refresh 2 inputs -> {out.name}-v2'",
    )
    metrics = run.data.metrics
    assert metrics["docs_in/read"] == second["version_counts"]["responses"]
    assert metrics["responses"] == second["counts"]["responses"]
    assert metrics["dataset_version"] == 2
