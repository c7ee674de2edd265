"""A refresh is safe to run on a schedule and on a shared filesystem (issue #20): one refresh at a
time per output folder, cached per-file results that are data (never unpickled), and inputs
that cannot be read failing cleanly, at once when permanent, without losing the others' work."""

from __future__ import annotations

import json
import pathlib
import pickle
import subprocess
import sys
import threading

import pytest
from test_data_refresh import write_crawl
from test_inputs import server, write_warc  # noqa: F401 (the local HTTP server fixture)

from lmforge.flows import data_refresh as flow_module
from lmforge.flows.data_refresh import RESULTS_DIR, data_refresh, file_cache_key
from lmforge.flows.params import DataRefreshRun
from lmforge.manifest import OutputLocked, output_lock, read_manifest, stage_version
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.inputs import InputsUnavailable
from lmforge.tasks.data.warc_processing import FileResult, process_warc_file


@pytest.fixture(scope="module")
def crawl_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("crawl")
    write_crawl(directory)
    return directory


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr("lmforge.flows.tracking._configured_uri", None)


def refresh(inputs, out, **overrides):
    return data_refresh(run=DataRefreshRun(input=[str(i) for i in inputs], out=str(out),
                                           **overrides))  # fmt: skip


# One refresh per output folder


def test_a_held_output_folder_is_refused_at_once_naming_the_folder_and_the_holder(tmp_path):
    out = tmp_path / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom lmforge.manifest import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()",
         str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(OutputLocked, match=f"{out} is being written.*pid {holder.pid} on"):
            with output_lock(out, wait=False):
                pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with output_lock(out, wait=False):  # the holder is gone, and so is its lock
        pass


@pytest.mark.timeout(30)
def test_the_lock_is_reentrant_so_a_refresh_can_commit_while_holding_it(tmp_path):
    out = tmp_path / "data"
    with output_lock(out, wait=False):
        with stage_version(out, "demo", {}) as writer:
            (writer.path / "part.txt").write_text("1")
        with stage_version(out, "demo", {}) as writer:  # version 2 takes the lock again
            (writer.path / "sub").mkdir()
            (writer.path / "sub" / "part.txt").write_text("2")
    assert read_manifest(out)["version"] == 2


@pytest.mark.slow
def test_two_refreshes_into_one_folder_one_succeeds_and_the_other_refuses(
    prefect_api, tracking, crawl_dir, tmp_path, monkeypatch
):
    out = tmp_path / "data"
    first_is_working, second_was_refused = threading.Event(), threading.Event()
    real = flow_module.process_warc_file

    def hold_until_the_second_refresh_was_refused(path, config, staging, extraction_cache=None):
        first_is_working.set()
        assert second_was_refused.wait(timeout=60)
        return real(path, config, staging)

    monkeypatch.setattr(flow_module, "process_warc_file", hold_until_the_second_refresh_was_refused)
    outcome: dict = {}

    def first_refresh():
        try:
            outcome["manifest"] = refresh([crawl_dir / "*.warc.gz"], out, runner="threads")
        except BaseException as error:  # reported by the assertions below
            outcome["error"] = error

    first = threading.Thread(target=first_refresh)
    first.start()
    try:
        assert first_is_working.wait(timeout=120)
        with pytest.raises(OutputLocked, match=f"output folder {out} is being written"):
            refresh([crawl_dir / "*.warc.gz"], out, runner="threads")
        assert (tmp_path / ".data.staging").is_dir()  # the refused run left it alone
    finally:
        second_was_refused.set()
        first.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    manifest = outcome["manifest"]
    assert manifest == read_manifest(out) and manifest["counts"]["warc_files"] == 2
    assert not (tmp_path / ".data.staging").exists()


# Cached per-file results are data


@pytest.fixture(scope="module")
def staged_result(crawl_dir, tmp_path_factory):
    staging = tmp_path_factory.mktemp("staging")
    result = process_warc_file(crawl_dir / "crawl-00000.warc.gz", DataConfig(), staging)
    return result, staging


def test_a_file_result_survives_json_unchanged(staged_result):
    result, staging = staged_result
    assert FileResult.from_json(result.to_json(), staging) == result


@pytest.mark.parametrize("tamper, complaint", [
    (lambda r: r["stats"].update(responses="7"), "record.stats.responses is str"),
    (lambda r: r["stats"].update(responses=True), "record.stats.responses is bool"),
    (lambda r: r.update(size_bytes=-1), "record.size_bytes is negative"),
    (lambda r: r["stats"]["languages"].update(en=[1]), "record.stats.languages.en is list"),
    (lambda r: r.update(extra="x"), "record has fields"),
    (lambda r: r.update(format=0), "record format 0"),
    (lambda r: r["staged"]["candidates"].update(name="../elsewhere.parquet"),
     "not a file name inside"),
    (lambda r: r["staged"]["removed"].update(name="nothere.parquet"), "is missing"),
    (lambda r: r["staged"]["candidates"].update(sha256="0" * 64), "does not match"),
])  # fmt: skip
def test_a_tampered_file_result_is_refused(staged_result, tamper, complaint):
    result, staging = staged_result
    record = json.loads(result.to_json())
    tamper(record)
    with pytest.raises(ValueError, match=complaint):
        FileResult.from_json(json.dumps(record), staging)


class _Payload:
    """Unpickling this creates the marker file: what a tampered pickle could run instead."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.slow
def test_a_tampered_cache_never_runs_code_and_the_refresh_completes(
    prefect_api, tracking, crawl_dir, tmp_path, monkeypatch
):
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    out, staging = tmp_path / "data", tmp_path / ".data.staging"
    results = staging / RESULTS_DIR
    results.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    first, second = sorted(crawl_dir.glob("*.warc.gz"))
    for warc in (first, second):
        key = file_cache_key(warc, DataConfig())
        # Where Prefect's result storage kept (and unpickled) the task's result, and our record.
        prefect_record = ResultRecord(metadata=ResultRecordMetadata(
            storage_key=str(results / key), serializer=PickleSerializer(picklelib="cloudpickle"),
        ), result=_Payload(marker))  # fmt: skip
        (results / key).write_bytes(prefect_record.serialize())
    (results / f"{file_cache_key(first, DataConfig())}.json").write_bytes(
        pickle.dumps(_Payload(marker))
    )
    wrong_types = json.loads(process_warc_file(second, DataConfig(), staging).to_json())
    wrong_types["stats"]["candidates"] = "many"
    (results / f"{file_cache_key(second, DataConfig())}.json").write_text(json.dumps(wrong_types))
    processed: list[str] = []
    real = flow_module.process_warc_file

    def count_calls(path, config, staging_dir, extraction_cache=None):
        processed.append(path.name)
        return real(path, config, staging_dir)

    monkeypatch.setattr(flow_module, "process_warc_file", count_calls)
    manifest = refresh([first, second], out, runner="threads")
    assert not marker.exists()
    assert sorted(processed) == [first.name, second.name]  # neither record was trusted
    from_scratch = refresh([first, second], tmp_path / "scratch", runner="threads")
    assert manifest["counts"] == from_scratch["counts"]


# Inputs that cannot be read


@pytest.mark.slow
def test_a_missing_url_fails_the_refresh_before_any_work(
    prefect_api, tracking, server, crawl_dir, tmp_path  # noqa: F811
):
    base, _, requests = server
    out = tmp_path / "data"
    with pytest.raises(InputsUnavailable, match=f"1 of 1 remote inputs.*{base}missing.warc.gz: "
                                                "HTTP 404"):  # fmt: skip
        refresh([crawl_dir / "crawl-00000.warc.gz", base + "missing.warc.gz"], out)
    assert requests == ["HEAD /missing.warc.gz"]  # asked once, nothing downloaded
    assert not out.exists() and not (tmp_path / ".data.staging").exists()


@pytest.mark.slow
def test_an_input_lost_mid_run_fails_cleanly_across_processes_and_keeps_the_others_work(
    prefect_api, tracking, server, crawl_dir, tmp_path, monkeypatch  # noqa: F811
):
    base, _, requests = server
    out, good = tmp_path / "data", crawl_dir / "crawl-00000.warc.gz"
    gone = base + "gone/web-00009.warc.gz"  # answers HEAD, then 404 on GET
    with pytest.raises(InputsUnavailable) as raised:
        refresh([good, gone], out, runner="local", workers=2)
    message = str(raised.value)
    assert message.startswith("1 of 2 inputs could not be read, so no dataset version was written")
    assert f"{gone}: HTTP 404" in message and "kept in" in message and "\n" not in message
    assert requests.count("/gone/web-00009.warc.gz") == 1  # a permanent error: no retries
    assert not out.exists()
    staged = list((tmp_path / ".data.staging" / RESULTS_DIR).glob("*.json"))
    assert [FileResult.from_json(p.read_text(), p.parent.parent).warc_file for p in staged] == [
        good.name
    ]
    processed: list[str] = []
    monkeypatch.setattr(flow_module, "process_warc_file",
                        lambda *args: processed.append(args[0]))  # fmt: skip
    manifest = refresh([good], out, runner="threads")  # the rerun without the lost input
    assert processed == [] and manifest["counts"]["warc_files"] == 1
