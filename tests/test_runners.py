"""Choosing the task runner by configuration, and the CLI's progress bar."""

from __future__ import annotations

import io
import os
import signal
import threading

import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from lmforge.cli import build_parser, stage_configs, warc_progress_bar
from lmforge.flows.data_refresh import file_progress
from lmforge.flows.params import DataRefreshRun
from lmforge.flows.runners import (
    LocalProcessTaskRunner,
    default_workers,
    make_task_runner,
    terminate_workers,
)
from lmforge.stopping import Stopped, stop_handlers
from lmforge.tasks import plots


def test_local_is_a_process_per_worker_defaulting_to_one_per_core():
    runner = make_task_runner("local")
    assert isinstance(runner, ProcessPoolTaskRunner)
    assert runner._max_workers == default_workers() >= 1
    assert make_task_runner("local", workers=3)._max_workers == 3
    assert isinstance(make_task_runner("threads", workers=2), ThreadPoolTaskRunner)


def test_dask_uses_the_given_scheduler_or_starts_a_local_cluster():
    remote = make_task_runner("dask", dask_address="tcp://10.0.0.5:8786")
    assert isinstance(remote, DaskTaskRunner)
    assert remote.address == "tcp://10.0.0.5:8786"
    local = make_task_runner("dask", workers=3)
    assert local.address is None
    assert local.cluster_kwargs["n_workers"] == 3
    assert local.cluster_kwargs["threads_per_worker"] == 1


def test_bad_runner_settings_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="unknown task runner 'ray'"):
        make_task_runner("ray")
    with pytest.raises(ValueError, match="only used by the dask runner"):
        make_task_runner("local", dask_address="tcp://10.0.0.5:8786")


def test_the_cli_passes_runner_and_scheduler_address_to_the_flow():
    args = build_parser().parse_args(["data", "refresh", "--input", "a.warc.gz", "--runner",
                                      "dask", "--dask-address", "tcp://10.0.0.5:8786"])  # fmt: skip
    run = stage_configs(args)["run"]
    assert run.runner == "dask" and run.dask_address == "tcp://10.0.0.5:8786"
    assert DataRefreshRun().runner == "local"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _finish_files(total: int) -> None:
    from lmforge.flows import data_refresh

    for done in range(1, total + 1):
        for listener in list(data_refresh._progress_listeners):
            listener(done, total, f"crawl-{done:05d}.warc.gz")


def test_the_progress_bar_counts_finished_files_on_a_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with warc_progress_bar():
        _finish_files(3)
    assert "WARC files" in terminal.getvalue()
    assert "3/3" in terminal.getvalue()


def test_no_progress_bar_when_stderr_is_not_a_terminal(monkeypatch):
    captured = io.StringIO()
    monkeypatch.setattr("sys.stderr", captured)
    with warc_progress_bar():
        _finish_files(2)
    assert captured.getvalue() == ""


def test_progress_listeners_are_removed_when_the_block_ends():
    from lmforge.flows import data_refresh

    with file_progress(lambda *args: None):
        assert len(data_refresh._progress_listeners) == 1
    assert data_refresh._progress_listeners == []


COUNTS = {
    "responses": 100, "kept": 50, "bytes_in": 1_000_000, "bytes_out": 90_000,
    "removed_by_stage": {"read": 10, "extract": 10, "language": 5, "c4_quality": 8,
                         "gopher_quality": 12, "dedup": 5},
    "removed_by_reason": {
        "read": {"http_404": 10}, "extract": {"no_main_text": 10},
        "language": {"low_confidence": 5},
        "c4_quality": {"lorem_ipsum": 8}, "gopher_quality": {"stop_words": 12},
        "dedup": {"near_duplicate": 5},
    },
    "languages": {"en": 40, "de": 10},
}  # fmt: skip


def test_funnel_rows_follow_the_configured_step_order():
    rows = plots.funnel_rows(COUNTS, step_order=["gopher_quality", "c4_quality"])
    assert [r["step"] for r in rows] == [
        "read", "extract", "language", "gopher_quality", "c4_quality", "dedup"]  # fmt: skip
    assert rows[0]["docs_in"] == 100 and rows[-1]["docs_out"] == 50
    assert all(a["docs_out"] == b["docs_in"] for a, b in zip(rows, rows[1:]))
    assert rows[3]["removed"] == 12 and rows[4]["reasons"] == {"lorem_ipsum": 8}
    assert rows[0]["bytes_in"] == 1_000_000 and rows[-1]["bytes_out"] == 90_000


def test_funnel_rows_use_recorded_step_statistics_and_append_dedup():
    steps = {
        "read": {"docs_in": 100, "docs_out": 90, "bytes_in": 10**6, "bytes_out": 9 * 10**5,
                 "dropped": {"http_404": 10}},
        "extract": {"docs_in": 90, "docs_out": 55, "bytes_in": 9 * 10**5, "bytes_out": 10**5,
                    "dropped": {"no_main_text": 35}},
    }  # fmt: skip
    rows = plots.funnel_rows(COUNTS, steps=steps)
    assert [r["step"] for r in rows] == ["read", "extract", "dedup"]
    assert rows[1]["bytes_out"] == 10**5
    assert rows[2] == {"step": "dedup", "docs_in": 55, "docs_out": 50, "removed": 5,
                       "bytes_in": 10**5, "bytes_out": 90_000,
                       "reasons": {"near_duplicate": 5}}  # fmt: skip


def test_stage_metrics_are_named_by_step_reason_and_language():
    from lmforge.flows.data_refresh import stage_metrics

    rows = plots.funnel_rows(COUNTS, step_order=["gopher_quality", "c4_quality"])
    metrics = stage_metrics(rows, COUNTS["languages"])
    assert metrics["docs_out/gopher_quality"] == 100 - 10 - 10 - 5 - 12
    assert metrics["removed/gopher_quality/stop_words"] == 12
    assert metrics["removed/read/http_404"] == 10
    assert metrics["lang/de"] == 10
    assert "bytes_in/extract" not in metrics  # unknown, not zero


def test_the_funnel_chart_is_a_png(tmp_path):
    path = plots.removal_funnel(COUNTS, tmp_path / "funnel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stop_signal_while_workers_start_takes_effect_once_all_have_started():
    """Raised between spawns (or inside one), the stop would leave a pool half started and a
    child reading its start-up data from a closed pipe. The signal reaches the process through
    another thread (as through Prefect's), which does not block SIGINT."""
    runner = LocalProcessTaskRunner(max_workers=2)
    idle = threading.Event()
    other_thread = threading.Thread(target=idle.wait, daemon=True)
    other_thread.start()
    with stop_handlers(), runner:
        executor = runner._executor
        spawn = executor._spawn_process

        def spawn_then_get_a_ctrl_c() -> None:
            spawn()
            if len(executor._processes) == 1:
                os.kill(os.getpid(), signal.SIGINT)

        executor._spawn_process = spawn_then_get_a_ctrl_c
        with pytest.raises(Stopped):
            runner._start_workers()
        started = list(executor._processes.values())
        assert len(started) == 2
        terminate_workers()
    idle.set()
    assert all(process.exitcode == -signal.SIGTERM for process in started)
