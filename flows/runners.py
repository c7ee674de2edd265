"""Task runners chosen by configuration, so per-file work scales from threads to processes
(and, later, to a Dask cluster) without touching the flows."""

from __future__ import annotations

import os
from typing import Literal

from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

RunnerKind = Literal["threads", "processes"]


def make_task_runner(kind: RunnerKind, workers: int = 0):
    """`workers=0` means one per core."""
    workers = workers or os.cpu_count() or 1
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    raise ValueError(f"unknown task runner {kind!r}: use 'threads' or 'processes'")
