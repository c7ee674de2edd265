"""Entry point for each rank under torchrun:
`python -m lmforge.model.launch CONFIG.json [--metrics METRICS.jsonl] [--result RESULT.json]`.

CONFIG.json holds a `TrainJob` as a JSON object. Rank 0 appends each metrics record to
METRICS.jsonl as one JSON line `{"step": ..., "metrics": {...}}` while it trains, and writes the
final `TrainResult` to RESULT.json (renamed into place, so it is whole or absent). Files, not the
console: the console carries the progress bar and any library's output, which end lines when
they please, so numbers printed there can be split or glued to other text. The process that
started torchrun reads the files (`lmforge.tasks.pretrain`) and streams the console as it is.

Several machines: run the same torchrun command on each with --nnodes, --node-rank and
--rdzv-endpoint HOST:PORT (see `lmforge.tasks.pretrain`); out_dir must be on a shared filesystem.
Only node 0 holds rank 0, so only its files are written.

SIGINT or SIGTERM (torchrun passes them on) stops every rank after the same step, rank 0 having
written a checkpoint there; the rank then exits quietly with 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmforge.model.parallel import distributed_env
from lmforge.model.runtime import LogCallback
from lmforge.model.train import TrainJob, TrainResult, train
from lmforge.stopping import Stopped, exit_now, stop_handlers


def result_to_dict(result: TrainResult) -> dict:
    values = dataclasses.asdict(result)
    values["out_dir"] = str(result.out_dir)
    values["checkpoint"] = str(result.checkpoint) if result.checkpoint else None
    return values


def result_from_dict(values: dict) -> TrainResult:
    values = dict(values)
    values["out_dir"] = Path(values["out_dir"])
    values["checkpoint"] = Path(values["checkpoint"]) if values["checkpoint"] else None
    return TrainResult(**values)


def metrics_file_writer(path: Path) -> LogCallback:
    """An `on_log` that appends each record to `path` as one JSON line, flushed at once so a
    reader sees it while training goes on (and a killed run keeps what it logged)."""

    def append(step: int, metrics: Mapping[str, float]) -> None:
        line = json.dumps({"step": step, "metrics": dict(metrics)}) + "\n"
        with path.open("a", encoding="utf-8") as file:
            file.write(line)

    return append


def read_metrics_records(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The complete records appended to `path` (by `metrics_file_writer`) after byte `offset`,
    and the offset to read on from. A last line still being written is left for the next read;
    a missing file (nothing logged yet) has no records."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    records = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return records, offset + len(complete)


def write_result(path: Path, result: TrainResult) -> None:
    """`result` as JSON in `path`, written beside it and renamed: a reader finds it whole."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result_to_dict(result)), encoding="utf-8")
    os.replace(partial, path)


def read_result(path: Path) -> TrainResult | None:
    """The result `write_result` left in `path`; None when none was written."""
    if not path.is_file():
        return None
    return result_from_dict(json.loads(path.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.model.launch")
    parser.add_argument("config", type=Path, help="a TrainJob as JSON")
    parser.add_argument("--metrics", type=Path, help="rank 0 appends metrics here (JSON lines)")
    parser.add_argument("--result", type=Path, help="rank 0 writes the TrainResult here (JSON)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    job = TrainJob.model_validate_json(args.config.read_text())
    is_main = distributed_env().is_main
    # train() calls on_log on rank 0 only; the other ranks never touch the files.
    on_log = metrics_file_writer(args.metrics) if args.metrics and is_main else None
    with stop_handlers():
        try:
            result = train(job, on_log=on_log)
        except Stopped as stop:  # checkpointed: the launcher finds it and reports the stop
            if argv is None:  # the rank's own process: skip the seconds of torch's teardown
                exit_now(stop.exit_code)
            return stop.exit_code
    if args.result and is_main:
        write_result(args.result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
