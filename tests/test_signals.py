"""Ctrl-C (SIGINT) and SIGTERM stop a command within seconds: one line on stderr saying what
was kept and how to resume, exit code 130 or 143, no traceback, no process left behind, MLflow
runs ended as KILLED. Training stops after the step under way with a checkpoint there, which
`--resume` continues. Without PREFECT_API_URL a command serves the Prefect API from a thread of
its own process: no server process, none per worker.

The CLI tests run `python -m lmforge.cli` in a session of its own (as a terminal's foreground
job) and find every process it started by a marker in their environment."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from shard_fixtures import write_shards_dir

from lmforge.cli import as_stop, build_parser, stop_message
from lmforge.model.checkpoint import latest_checkpoint
from lmforge.model.config import ModelSpec
from lmforge.model.train import TrainConfig, TrainJob, train
from lmforge.stopping import INVOCATION_TAG, Stopped, stop_signal
from lmforge.tasks.pretrain import TorchrunOptions, run_pretraining

MICRO_MODEL = {"n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 32}
# A stopped command must be gone within this many seconds of the signal.
STOP_SECONDS = 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    pattern = list(range(2, 26))
    root = tmp_path_factory.mktemp("shards") / "shards"
    return write_shards_dir(
        root, [pattern * 3 for _ in range(40)], [pattern * 3 for _ in range(4)],
        vocab_size=64, shard_tokens=1000,
    )  # fmt: skip


def micro_job(shards: Path, out: Path, **overrides) -> TrainJob:
    values = dict(
        max_steps=1000, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=2, eval_every=500,
        eval_batches=2, log_every=1, checkpoint_every=500, device="cpu", progress=False,
    )
    return TrainJob(shards_dir=str(shards), out_dir=str(out), model=ModelSpec(**MICRO_MODEL),
                    train=TrainConfig(**{**values, **overrides}))  # fmt: skip


# --- the training loop ------------------------------------------------------------------------


def test_a_stop_signal_ends_training_after_the_step_under_way_with_a_checkpoint_there(
    shards, tmp_path
):
    def signal_at_step_5(step, metrics):
        if step == 5 and "loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Stopped) as stopped:
        train(micro_job(shards, tmp_path / "out"), on_log=signal_at_step_5)
    stop = stopped.value
    assert (stop.signum, stop.step, stop.exit_code) == (signal.SIGTERM, 6, 143)
    assert stop.checkpoint == latest_checkpoint(tmp_path / "out")
    assert stop.checkpoint.name == "step-000006"
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert stop_signal() is None  # outside a command, the next call starts afresh

    resumed = train(micro_job(shards, tmp_path / "out", resume=True, stop_after=2))
    assert resumed.steps == 8 and not resumed.completed


def test_a_ctrl_c_while_training_is_a_keyboard_interrupt_after_the_checkpoint(shards, tmp_path):
    def interrupt_at_step_3(step, metrics):
        if step == 3 and "loss" in metrics:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as stopped:
        train(micro_job(shards, tmp_path / "out"), on_log=interrupt_at_step_3)
    assert stopped.value.exit_code == 130 and stopped.value.checkpoint.name == "step-000004"


@pytest.mark.slow
def test_a_stop_reaches_every_torchrun_rank_which_checkpoint_the_same_step(shards, tmp_path):
    out = tmp_path / "ddp"
    earlier = set(own_children())  # other tests' fixtures may have children of this process

    def stop_at_step_4(step, metrics):
        if step == 4 and "loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)  # as a terminal's Ctrl-C reaches the launcher

    started = time.monotonic()
    with pytest.raises(Stopped) as stopped:
        run_pretraining(micro_job(shards, out, strategy="ddp"), on_log=stop_at_step_4,
                        launch=TorchrunOptions(nproc=2))  # fmt: skip
    assert stopped.value.checkpoint == latest_checkpoint(out)
    step = stopped.value.step
    assert 4 < step < 1000 and stopped.value.checkpoint.name == f"step-{step:06d}"
    assert time.monotonic() - started < 120
    assert not set(own_children()) - earlier  # torchrun and both ranks are gone
    # One process resumes it with the same global batch (2 ranks x 4 sequences).
    resumed = train(micro_job(shards, out, batch_size=8, resume=True, stop_after=1))
    assert resumed.steps == step + 1


def own_children() -> list[int]:
    """Processes whose parent is this one (multiprocessing's included)."""
    multiprocessing.active_children()  # reaps exited ones
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid() and state != "Z":
            found.append(int(entry.name))
    return found


# --- the message ------------------------------------------------------------------------------


def test_the_stop_message_names_the_checkpoint_and_the_command_that_resumes_it():
    words = ["train", "--shards", "s", "--out", "my out", "--no-resume"]
    args = build_parser(lazy=True).parse_args(words)
    stop = Stopped(signal.SIGTERM, step=120, checkpoint=Path("my out/checkpoints/step-000120"))
    assert stop_message(args, words, stop) == (
        "stopped by SIGTERM at step 120; checkpoint kept in my out/checkpoints/step-000120; "
        "resume with `lmforge train --shards s --out 'my out' --resume`"
    )
    run = build_parser(lazy=True).parse_args(["run", "--work-dir", "w"])
    assert stop_message(run, ["run", "--work-dir", "w"], Stopped(signal.SIGINT)) == (
        "stopped by SIGINT; run the same command again to continue: finished stages and files "
        "are reused"
    )


def test_prefects_termination_signal_and_a_bare_ctrl_c_count_as_stops():
    from prefect.exceptions import TerminationSignal

    assert as_stop(TerminationSignal(signal.SIGTERM)).exit_code == 143
    assert as_stop(KeyboardInterrupt()).exit_code == 130
    assert as_stop(SystemExit(1)) is None


# --- the command's Prefect API ----------------------------------------------------------------


def test_without_a_server_a_command_serves_the_prefect_api_from_a_thread(tmp_path, monkeypatch):
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    from lmforge.servers import command_prefect_api

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    database = f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    before = own_children()
    with temporary_settings(
        {PREFECT_SERVER_DATABASE_CONNECTION_URL: database}, restore_defaults={PREFECT_API_URL}
    ):
        with command_prefect_api(startup_timeout=300) as url:
            with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
                assert response.status == 200
            assert os.environ["PREFECT_API_URL"] == url and PREFECT_API_URL.value() == url
            assert os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] == "false"
            assert own_children() == before  # no server process
        assert "PREFECT_API_URL" not in os.environ and PREFECT_API_URL.value() is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=5)


# --- commands, as a terminal runs them --------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    """One Prefect database for the commands here: created once, then each starts in seconds."""
    return tmp_path_factory.mktemp("prefect-home")


class Command:
    """`lmforge ARGS` in a session of its own, its output in files, every process it starts
    marked in its environment."""

    def __init__(self, args: list[str], cwd: Path, prefect_home: Path) -> None:
        self.marker = f"LMFORGE_SIGNAL_TEST={uuid.uuid4().hex}"
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("PREFECT_API", "MLFLOW_TRACKING_URI"))}  # fmt: skip
        key, value = self.marker.split("=")
        env.update({key: value, "PREFECT_HOME": str(prefect_home), "OMP_NUM_THREADS": "1"})
        self.stdout, self.stderr = cwd / "stdout.txt", cwd / "stderr.txt"
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lmforge.cli", *args], cwd=cwd, env=env,
                stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip

    def wait_until(self, condition, what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"the command ended before {what}:\n{self.stderr.read_text()}")
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"no {what} within {timeout} s:\n{self.stderr.read_text()}")
            time.sleep(0.1)

    def stop(self, signum: int, group: bool = False) -> float:
        """Send `signum` (to the whole session, as a terminal's Ctrl-C does, when `group`);
        returns the seconds until the command exited."""
        started = time.monotonic()
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"still running 60 s after {signal.Signals(signum).name}")
        return time.monotonic() - started

    def processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of every live process started by the command, itself included."""
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                environ = (entry / "environ").read_bytes()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if self.marker.encode() in environ.split(b"\0"):
                found.append((int(entry.name), cmdline))
        return found

    def leftovers(self, patience: float = 5.0) -> list[tuple[int, str]]:
        """What still runs `patience` seconds after the command exited."""
        deadline = time.monotonic() + patience
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left


def assert_stopped_quietly(command: Command, seconds: float, signum: int, words: str) -> str:
    """Exit code, time and stderr of a stopped command; returns its one stop line."""
    stderr = command.stderr.read_text()
    name = signal.Signals(signum).name
    assert command.process.returncode == 128 + signum, stderr
    assert seconds < STOP_SECONDS, f"{seconds:.1f} s"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"lmforge {words}: stopped by {name}"), stderr
    assert sum("stopped by" in line for line in lines) == 1, stderr
    for noise in ("Traceback", "ConnectError", "Crash detected", "Error logging to API"):
        assert noise not in stderr, stderr
    assert command.leftovers() == []
    return lines[-1]


STOP_LINE = re.compile(r"at step (\d+); checkpoint kept in (\S+); resume with `(.+)`$")


def run_statuses(store: Path) -> dict[str, str]:
    """Run name -> status of the runs the last command made in the MLflow store."""
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    newest = max(runs, key=lambda run: run.info.start_time).data.tags[INVOCATION_TAG]
    return {run.data.tags["lmforge.stage"]: run.info.status for run in runs
            if run.data.tags.get(INVOCATION_TAG) == newest}  # fmt: skip


def train_args(shards: Path, out: str) -> list[str]:
    return [
        "train", "--shards", str(shards), "--out", out, "--train.max-steps", "100000",
        "--train.checkpoint-every", "50", "--train.eval-every", "100000",
        "--train.batch-size", "4", "--train.seq-len", "16", "--train.device", "cpu",
        *(arg for key, value in MICRO_MODEL.items() for arg in (f"--model.{key}", str(value))),
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_lmforge_train_with_a_checkpoint_that_resumes(
    signum, shards, prefect_home, tmp_path
):
    command = Command(train_args(shards, "train"), tmp_path, prefect_home)
    command.wait_until(lambda: latest_checkpoint(tmp_path / "train") is not None,
                       "first checkpoint")  # fmt: skip
    line = assert_stopped_quietly(command, command.stop(signum), signum, "train")
    step, checkpoint, resume = STOP_LINE.search(line).groups()
    assert Path(tmp_path / checkpoint) == latest_checkpoint(tmp_path / "train")
    assert checkpoint == f"train/checkpoints/step-{int(step):06d}" and int(step) >= 50
    assert run_statuses(tmp_path / "mlflow.db") == {"pretrain": "KILLED"}
    if signum != signal.SIGTERM:
        return
    # The command the line gives continues from that step.
    words = shlex.split(resume)
    assert words[0] == "lmforge" and words[-1] == "--resume"
    again = Command([*words[1:], "--train.stop-after", "2"], tmp_path, prefect_home)
    again.process.wait(timeout=600)
    assert again.process.returncode == 0, again.stderr.read_text()
    summary = json.loads(again.stdout.read_text())
    assert summary["steps"] == int(step) + 2 and not summary["completed"]


def run_args(work: str, workers: int = 1) -> list[str]:
    return [
        "run", "--work-dir", work, "--workers", str(workers), "--shards.vocab-size", "300",
        "--train.max-steps", "100000", "--train.checkpoint-every", "50",
        "--train.eval-every", "100000", "--train.batch-size", "2", "--train.seq-len", "16",
        "--train.device", "cpu", "--no-register-model",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigterm_stops_lmforge_run_while_it_trains_and_names_the_checkpoint(
    prefect_home, tmp_path
):
    """Also watched on the way: no process of the command starts a Prefect server, and the
    data stage's workers use the command's API."""
    args = run_args("work", workers=2)
    command = Command(args, tmp_path, prefect_home)
    train = tmp_path / "work" / "train"
    workers: dict[int, str] = {}

    def trained_while_no_process_serves_prefect() -> bool:
        for pid, cmdline in command.processes():
            assert "uvicorn" not in cmdline and "prefect.server" not in cmdline, cmdline
            if "multiprocessing" in cmdline and pid not in workers:
                with open(f"/proc/{pid}/environ", "rb") as file:
                    workers[pid] = file.read().decode(errors="replace")
        return latest_checkpoint(train) is not None

    command.wait_until(trained_while_no_process_serves_prefect, "first checkpoint")
    line = assert_stopped_quietly(
        command, command.stop(signal.SIGTERM), signal.SIGTERM, "run"
    )
    step, checkpoint, resume = STOP_LINE.search(line).groups()
    # The line names the training's own folder; `work/train` links to it.
    assert Path(checkpoint) == latest_checkpoint(train).resolve()
    assert resume == shlex.join(["lmforge", *args])
    statuses = run_statuses(tmp_path / "work" / "mlflow.db")
    assert statuses == {"pipeline": "KILLED", "data_refresh": "FINISHED",
                        "build_shards": "FINISHED", "pretrain": "KILLED"}  # fmt: skip
    assert "Starting temporary server" not in command.stderr.read_text()
    assert workers, "no data stage worker was seen"
    urls = {re.search(r"PREFECT_API_URL=(\S+?)\0", env + "\0").group(1)
            for env in workers.values()}  # fmt: skip
    assert len(urls) == 1 and urls.pop().startswith("http://127.0.0.1:")
    assert all("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false" in env for env in workers.values())


@pytest.mark.slow
def test_ctrl_c_in_the_data_stage_of_lmforge_run_stops_its_worker_processes(
    prefect_home, tmp_path
):
    command = Command(run_args("work", workers=2), tmp_path, prefect_home)
    command.wait_until(
        lambda: any("multiprocessing" in cmdline for _, cmdline in command.processes()),
        "data stage workers",
    )
    # A terminal sends Ctrl-C to every process of its foreground job.
    seconds = command.stop(signal.SIGINT, group=True)
    line = assert_stopped_quietly(command, seconds, signal.SIGINT, "run")
    assert line.endswith("run the same command again to continue: finished stages and files "
                         "are reused")  # fmt: skip
    assert run_statuses(tmp_path / "work" / "mlflow.db")["pipeline"] == "KILLED"
