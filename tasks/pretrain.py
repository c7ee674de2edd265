"""Pretraining launch: runs the training loop of `lmforge.model.train` for the orchestration layer.

One process runs in this process. Several (`nproc` > 1, or several machines) run as a `torchrun`
subprocess whose output is streamed line by line; rank 0's metrics come back through the same
pipe and reach `on_log` as if training ran here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from lmforge.model.launch import METRICS_MARKER, RESULT_MARKER, result_from_dict
from lmforge.model.runtime import LogCallback
from lmforge.model.train import TrainJob, TrainResult, train


@dataclass(frozen=True)
class TorchrunOptions:
    """How many processes train, and where. nproc per machine; for several machines run the same
    launch on each with its node_rank, all pointing at rdzv_endpoint (HOST:PORT of node 0)."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

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
    return launch.world_size > 1 or job.train.strategy not in (None, "single")


def torchrun_command(config_file: Path, launch: TorchrunOptions) -> list[str]:
    """The torchrun command line that trains `config_file` on this machine's processes."""
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
    return command + ["-m", "lmforge.model.launch", str(config_file)]


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
    log = on_log or (lambda step, metrics: None)
    result: TrainResult | None = None
    recent: deque[str] = deque(maxlen=40)
    with tempfile.TemporaryDirectory(prefix="lmforge-train-") as tmp:
        config_file = Path(tmp) / "train_config.json"
        config_file.write_text(config.model_dump_json())
        process = subprocess.Popen(
            torchrun_command(config_file, launch),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert process.stdout is not None
        with process:
            for line in process.stdout:
                if line.startswith(METRICS_MARKER):
                    record = json.loads(line[len(METRICS_MARKER):])
                    log(record["step"], record["metrics"])
                elif line.startswith(RESULT_MARKER):
                    result = result_from_dict(json.loads(line[len(RESULT_MARKER):]))
                else:
                    recent.append(line)
                    output.write(line)
                    output.flush()
    if process.returncode != 0:
        raise RuntimeError(
            f"torchrun training exited with code {process.returncode}; last output:\n"
            + "".join(recent)
        )
    if result is None and launch.node_rank == 0:
        raise RuntimeError("torchrun training finished without reporting a result")
    return result
