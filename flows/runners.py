"""Task runners chosen by configuration, so per-file work scales from the cores of one machine to
a Dask cluster without touching the flows."""

from __future__ import annotations

import os
from typing import Literal

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

RunnerKind = Literal["local", "dask", "threads"]
RUNNER_KINDS: tuple[str, ...] = ("local", "dask", "threads")


def default_workers() -> int:
    """One worker per core this process may use (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_task_runner(
    kind: RunnerKind = "local", workers: int = 0, dask_address: str | None = None
) -> TaskRunner:
    """A Prefect task runner for mapped per-file work.

    - `local`: a pool of `workers` processes (0 = one per core); CPU-bound Python scales past
      the GIL.
    - `dask`: `prefect_dask.DaskTaskRunner` on the scheduler at `dask_address`
      (`tcp://host:8786`), or, without an address, on a `distributed.LocalCluster` started for
      the run with `workers` single-threaded worker processes.
    - `threads`: a thread pool in this process (cheap to start; for small inputs and tests).

    Raises ValueError for an unknown kind, or for a scheduler address given to a runner that
    would ignore it; ImportError with the install command when `prefect-dask` is missing.
    """
    workers = workers or default_workers()
    if dask_address and kind != "dask":
        raise ValueError(
            f"dask_address {dask_address!r} is only used by the dask runner: "
            f"pass runner='dask' or drop the address"
        )
    if kind == "local":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        return _dask_task_runner(workers, dask_address)
    raise ValueError(f"unknown task runner {kind!r}: use one of {', '.join(RUNNER_KINDS)}")


def _dask_task_runner(workers: int, address: str | None) -> TaskRunner:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as error:
        raise ImportError(
            "runner 'dask' needs prefect-dask: pip install 'prefect-dask>=0.3,<0.4'"
        ) from error
    if address:
        return DaskTaskRunner(address=address)
    # One thread per worker process: the per-file step is CPU-bound Python.
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "dashboard_address": None},
    )
