"""Task runners chosen by configuration, so per-file work scales from the cores of one machine to
a Dask cluster without touching the flows."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any, Literal, Self

from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from lmforge.stopping import interrupted, stop_at_safe_points

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
      the GIL (`LocalProcessTaskRunner`: the workers use the flow's Prefect API and its stop).
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
        return LocalProcessTaskRunner(max_workers=workers)
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        return _dask_task_runner(workers, dask_address)
    raise ValueError(f"unknown task runner {kind!r}: use one of {', '.join(RUNNER_KINDS)}")


class LocalProcessTaskRunner(ProcessPoolTaskRunner):
    """Prefect's process pool, its workers made part of the flow's command:

    - a task goes to its worker with the API the flow talks to, so no worker starts a temporary
      Prefect server of its own (each would, under Prefect's ephemeral mode);
    - workers ignore Ctrl-C, which the terminal sends to every process of the command: the
      flow's process decides what a stop does. They start with the pool, SIGINT blocked from
      birth (a child inherits the mask), so not even a Ctrl-C during their imports reaches them;
    - a flow that is stopping (`lmforge.stopping.interrupted`) terminates its workers instead of
      waiting for their files: a file cut short is processed again by the next run.
    """

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__(max_workers=max_workers, initializer=leave_interrupts_to_parent)
        self._workers_started = False

    def __enter__(self) -> Self:
        self._workers_started = False
        return super().__enter__()

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self._start_workers()
        with flow_api_settings():
            return super().submit(*args, **kwargs)

    def _start_workers(self) -> None:
        """Start every worker before the first task, SIGINT blocked; Python's pool would start
        them one per task, from Prefect's resolver thread. Not at `__enter__`: a worker enters
        a copy of the flow's runner too, and must not start a pool of its own.

        A stop signal meanwhile takes effect once all have started: raised in the middle of a
        spawn, it would leave a child reading its start-up data from a closed pipe (a traceback
        on the console after the stop line). Only the main thread runs the stop handler, so
        only a launch there can be cut."""
        launch = getattr(self._executor, "_launch_processes", None)
        if self._workers_started or launch is None:
            return
        self._workers_started = True
        in_main_thread = threading.current_thread() is threading.main_thread()
        with stop_at_safe_points() if in_main_thread else contextlib.nullcontext():
            with sigint_blocked():
                launch()

    def cancel_all(self) -> None:
        if interrupted():  # the flow engine cancels on SIGTERM; shutting down waits for workers
            terminate_workers()
        super().cancel_all()

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if interrupted() or (exc_type is not None and not issubclass(exc_type, Exception)):
            terminate_workers()
        super().__exit__(exc_type, exc_value, traceback)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread while the block runs: processes started meanwhile inherit
    the mask. A Ctrl-C meanwhile still reaches this process (through another of its threads,
    or this one once the block ends)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def leave_interrupts_to_parent() -> None:
    """A pool worker's first act: ignore SIGINT (the flow's process handles a Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def flow_api_settings() -> contextlib.AbstractContextManager:
    """Settings naming the API of the running flow, for what is submitted to other processes;
    nothing to change when PREFECT_API_URL is set (the lmforge CLI always sets it)."""
    if PREFECT_API_URL.value():
        return contextlib.nullcontext()
    context = FlowRunContext.get()
    client = context.client if context is not None else None
    if client is None:
        return contextlib.nullcontext()
    url = str(client.api_url).rstrip("/")
    return temporary_settings({PREFECT_API_URL: url, PREFECT_SERVER_EPHEMERAL_ENABLED: False})


def terminate_workers() -> None:
    """SIGTERM to every process this one started with multiprocessing (the pools' workers);
    each is waited for briefly, so none is left behind."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=5)


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
