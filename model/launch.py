"""Entry point for each rank under torchrun: `python -m lmforge.model.launch CONFIG.json`.

CONFIG.json holds a `TrainJob` as a JSON object. Rank 0 prints each metrics record and the
final result on stdout as one line behind a marker (`METRICS_MARKER`, `RESULT_MARKER`), so the
process that started torchrun can stream the logs and pick the numbers out of the same pipe.

Several machines: run the same torchrun command on each with --nnodes, --node-rank and
--rdzv-endpoint HOST:PORT (see `lmforge.tasks.pretrain`); out_dir must be on a shared filesystem.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from lmforge.model.parallel import distributed_env
from lmforge.model.train import TrainJob, TrainResult, train

METRICS_MARKER = "@lmforge-metrics "
RESULT_MARKER = "@lmforge-result "


def emit(marker: str, payload: dict) -> None:
    print(marker + json.dumps(payload), flush=True)


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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lmforge.model.launch CONFIG.json", file=sys.stderr)
        return 2
    job = TrainJob.model_validate_json(Path(args[0]).read_text())

    def on_log(step: int, metrics: dict[str, float]) -> None:
        emit(METRICS_MARKER, {"step": step, "metrics": metrics})

    result = train(job, on_log=on_log)  # on_log is only called on rank 0
    if distributed_env().is_main:
        emit(RESULT_MARKER, result_to_dict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
