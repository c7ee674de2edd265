"""Pretraining launch: runs the training loop of `lmforge.model.train` for the orchestration layer.

One process runs in this process. Several (`nproc` > 1, or several machines) run as a `torchrun`
subprocess whose console output (progress bar included) is copied line by line; rank 0's metrics
come back through a file it appends to (see `lmforge.model.launch`), read while it trains, and
reach `on_log` as if training ran here.

A stop signal (Ctrl-C, SIGTERM; see `lmforge.stopping`) reaches every rank: they stop after the
same step, rank 0 writes a checkpoint there, and whatever has not exited STOP_GRACE_SECONDS
later is killed. `Stopped` then names the newest checkpoint, to resume from.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from lmforge.model.checkpoint import latest_checkpoint
from lmforge.model.launch import read_metrics_records, read_result
from lmforge.model.runtime import LogCallback
from lmforge.model.train import TrainJob, TrainResult, train
from lmforge.stopping import Stopped, stop_at_safe_points, stop_process_tree, stop_signal


@dataclass(frozen=True)
class TorchrunOptions:
    """How many processes train, and where. nproc per machine; for several machines run the same
    launch on each with its node_rank, all pointing at rdzv_endpoint (HOST:PORT of node 0)."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    # Train in a child process even as one process: runs side by side share no interpreter.
    isolate: bool = False

    def __post_init__(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise ValueError(f"nproc and nnodes must be at least 1, got {self.nproc}, {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must lie in [0, nnodes={self.nnodes}), got {self.node_rank}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("several nodes need rdzv_endpoint (HOST:PORT of node 0)")

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def needs_torchrun(job: TrainJob, launch: TorchrunOptions) -> bool:
    return launch.isolate or launch.world_size > 1 or job.train.strategy not in (None, "single")


# How often the metrics file is read while training runs: MLflow follows within this delay.
POLL_SECONDS = 0.5
# How long the processes get to stop at a step and write rank 0's checkpoint before the kill.
STOP_GRACE_SECONDS = 10.0


def torchrun_command(
    config_file: Path, launch: TorchrunOptions, metrics_file: Path, result_file: Path
) -> list[str]:
    """The torchrun command line that trains `config_file` on this machine's processes; rank 0
    appends its metrics to `metrics_file` and writes its result to `result_file`."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc}"]
    if launch.nnodes == 1 and not launch.rdzv_endpoint:
        command.append("--standalone")  # a local rendezvous on a free port
    else:
        command += [
            f"--nnodes={launch.nnodes}",
            f"--node-rank={launch.node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.rdzv_endpoint}",
        ]
    return command + [
        "-m", "lmforge.model.launch", str(config_file),
        "--metrics", str(metrics_file), "--result", str(result_file),
    ]  # fmt: skip


def run_pretraining(
    config: TrainJob,
    on_log: LogCallback | None = None,
    launch: TorchrunOptions | None = None,
    output: TextIO | None = None,
) -> TrainResult | None:
    """Train per `config`; `on_log(step, metrics)` receives metrics as they are produced.

    With `launch` asking for more than one process (or a config whose strategy needs torchrun),
    training runs under torchrun; its output is copied to `output` (default stdout). Rank 0
    reports metrics and the result, so on a machine other than node 0 the result is None. Raises
    RuntimeError with the last lines of output when the processes fail.
    """
    launch = launch or TorchrunOptions()
    if not needs_torchrun(config, launch):
        return train(config, on_log=on_log)
    return run_torchrun(config, launch, on_log, output or sys.stdout)


def run_torchrun(
    config: TrainJob, launch: TorchrunOptions, on_log: LogCallback | None, output: TextIO
) -> TrainResult | None:
    """Train under torchrun: the console is copied to `output` by a thread while this one
    forwards rank 0's metrics to `on_log` every POLL_SECONDS, and what is left once the
    processes exit. A stop signal is passed on to every process (see the module docstring) and
    raised as `Stopped`; an exception from `on_log` stops them too and is raised."""
    log = on_log or (lambda step, metrics: None)
    recent: deque[str] = deque(maxlen=40)
    with tempfile.TemporaryDirectory(prefix="lmforge-train-") as tmp:
        config_file = Path(tmp) / "train_config.json"
        metrics_file, result_file = Path(tmp) / "metrics.jsonl", Path(tmp) / "result.json"
        config_file.write_text(config.model_dump_json())
        process = subprocess.Popen(
            torchrun_command(config_file, launch, metrics_file, result_file),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # the terminal's Ctrl-C reaches us, and we pass it on
        )
        assert process.stdout is not None
        with process:
            copier = threading.Thread(
                target=copy_console, args=(process.stdout, output, recent), daemon=True
            )
            copier.start()
            offset = 0
            try:
                with stop_at_safe_points():
                    while process.poll() is None and stop_signal() is None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            process.wait(timeout=POLL_SECONDS)
                        offset = forward_metrics(metrics_file, offset, log)
                    if (signum := stop_signal()) is not None:
                        stop_process_tree(process.pid, signum, STOP_GRACE_SECONDS)
                        forward_metrics(metrics_file, offset, log)  # up to the last step
                        raise stopped_training(signum, Path(config.out_dir))
                    forward_metrics(metrics_file, offset, log)
            except BaseException:
                stop_process_tree(process.pid, signal.SIGTERM, STOP_GRACE_SECONDS)
                raise
            finally:
                process.wait()
                copier.join()  # the console is copied to its end before anything is reported
        result = read_result(result_file)
    if process.returncode != 0:
        raise RuntimeError(
            f"torchrun training exited with code {process.returncode}; last output:\n"
            + "".join(recent)
        )
    if result is None and launch.node_rank == 0:
        raise RuntimeError("torchrun training finished without reporting a result")
    return result


def forward_metrics(metrics_file: Path, offset: int, log: LogCallback) -> int:
    """Pass the records rank 0 appended after `offset` to `log`; returns the offset to go on."""
    records, offset = read_metrics_records(metrics_file, offset)
    for record in records:
        log(record["step"], record["metrics"])
    return offset


def stopped_training(signum: int, out_dir: Path) -> Stopped:
    """The stop to report once the processes are gone: the newest checkpoint in `out_dir`
    (rank 0's at the step they stopped after, unless the grace ran out first)."""
    checkpoint = latest_checkpoint(out_dir)
    step = int(checkpoint.name.removeprefix("step-")) if checkpoint is not None else None
    return Stopped(signum, step=step, checkpoint=checkpoint)


def copy_console(source: TextIO, output: TextIO | None, recent: deque[str]) -> None:
    """Copy the processes' output to `output` line by line, keeping the last lines in `recent`
    for an error message. Reads to the end even when `output` fails (a closed terminal): a
    pipe left full would block training."""
    for line in source:
        recent.append(line)
        if output is None or stop_signal() is not None:  # a stopped run's tracebacks: noise
            continue
        try:
            output.write(line)
            output.flush()
        except (OSError, ValueError):
            output = None
