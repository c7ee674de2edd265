"""Stopping on Ctrl-C (SIGINT) or SIGTERM: promptly, quietly, keeping what can be kept.

The first stop signal is recorded (`stop_signal()`) and the console goes quiet (the command
prints one line about the stop, nothing else). Where work can stop at a safe point — the
training loop between steps, the torchrun launcher — it runs inside `stop_at_safe_points()`
and polls `stop_signal()`; anywhere else the signal raises `Stopped` at once. `Stopped` is a
KeyboardInterrupt: every `finally` runs, and Prefect records the runs it unwinds as crashed by
an interrupt. The CLI turns it into one line and exit code 128 + the signal's number.

Plain Python, so the training loop (`lmforge.model`) uses it too; only the two functions about
a stopped command's MLflow runs import MLflow.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import NoReturn

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """Work ended by a stop signal. `step` and `checkpoint` say what a training run kept (a
    resumable checkpoint at that step); None when nothing was kept."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: Path | None = None):
        super().__init__(signal_name(signum))
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


_received: int | None = None
# Whether `stop_handlers` runs: a command's stop is final; elsewhere (a notebook calling train)
# the next block of stop_at_safe_points starts afresh.
_handlers_installed = False
# How many blocks of stop_at_safe_points are running (in any thread): while one is, a signal
# only sets the flag, so the block stops at its next safe point.
_safe_blocks = 0
_lock = threading.Lock()


def stop_signal() -> int | None:
    """The stop signal this process received (SIGINT or SIGTERM), or None."""
    return _received


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is None:
        _received = signum
        quiet_console_when_stopping()
    if _safe_blocks == 0:
        raise Stopped(signum)


@contextlib.contextmanager
def stop_handlers() -> Iterator[None]:
    """SIGINT and SIGTERM stop the process (see the module docstring) while the block runs;
    the previous handlers come back after it. A no-op outside the main thread."""
    global _received, _handlers_installed
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    _handlers_installed = True
    try:
        yield
    finally:
        _handlers_installed, _received = False, None
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stop_at_safe_points() -> Iterator[None]:
    """Inside the block a stop signal only sets the flag: the code polls `stop_signal()` and
    stops at its next safe point (raising `Stopped` with what it kept). A signal the block did
    not act on is raised as `Stopped` when it ends.

    In the main thread the block installs the handler for its duration: Prefect's flow engine
    replaces SIGTERM's with one that raises wherever the flow happens to be, which would cut a
    training step (or a checkpoint) in half. Outside a command (`stop_handlers`), as when a
    notebook calls `train`, the stop belongs to the block: the next block starts afresh.
    """
    global _safe_blocks, _received
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    with _lock:
        if _safe_blocks == 0 and not _handlers_installed:
            _received = None
        _safe_blocks += 1
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with _lock:
            _safe_blocks -= 1
            received = _received
            if _safe_blocks == 0 and not _handlers_installed:
                _received = None
    if received is not None:
        raise Stopped(received)


def interrupted() -> bool:
    """Whether this process is stopping: a stop signal was received, or an interrupt
    (KeyboardInterrupt, or the TerminationSignal Prefect's flow engine raises for SIGTERM) is
    being handled right now."""
    if _received is not None:
        return True
    error = sys.exc_info()[1]
    prefect_errors = sys.modules.get("prefect.exceptions")
    termination = getattr(prefect_errors, "TerminationSignal", KeyboardInterrupt)
    return isinstance(error, (KeyboardInterrupt, termination))


class _QuietWhileStopping(logging.Filter):
    """Drops console records once the process is stopping: the crash reports of every run an
    interrupt unwinds would bury the one line that says what was kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not interrupted()


_QUIET = _QuietWhileStopping()


def quiet_console_when_stopping() -> None:
    """Make the console handlers of every logger configured so far drop records while the
    process is stopping (`interrupted`). Handlers that write elsewhere, such as Prefect's API
    log handler, keep working: the Prefect UI still shows how each run ended."""
    loggers = [logging.getLogger()]
    loggers += [item for item in logging.Logger.manager.loggerDict.values()
                if isinstance(item, logging.Logger)]  # fmt: skip
    handlers = [logging.lastResort] if logging.lastResort is not None else []
    handlers += [handler for logger in loggers for handler in logger.handlers]
    for handler in handlers:
        is_console = isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        )
        if is_console and _QUIET not in handler.filters:
            handler.addFilter(_QUIET)


def process_group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still running (our exited child is reaped first,
    so it does not linger as a zombie)."""
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(pgid: int, signum: int, grace: float) -> bool:
    """Send `signum` to process group `pgid`, give it `grace` seconds to exit, then SIGKILL
    whatever is left. Returns False when something survived SIGKILL for `grace` seconds more."""
    for sig in (signum, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not process_group_alive(pgid):
                return True
            time.sleep(0.1)
    return not process_group_alive(pgid)


@contextlib.contextmanager
def ignoring_stop_signals() -> Iterator[None]:
    """Further stop signals are ignored while the block runs: a stop being reported (a few
    bounded steps) is not cut short by the second Ctrl-C of an impatient user."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- MLflow runs of a stopped command (imports MLflow only when called) ----------------------

# Every MLflow run a command starts carries its invocation id, so a stop finds exactly them.
INVOCATION_TAG = "lmforge.invocation"


@contextlib.contextmanager
def tagged_mlflow_runs(invocation: str) -> Iterator[None]:
    """MLflow runs started while the block runs (in this process) get the tag
    INVOCATION_TAG = `invocation`, through MLflow's MLFLOW_RUN_CONTEXT (tags for every run)."""
    import json

    saved = os.environ.get("MLFLOW_RUN_CONTEXT")
    tags = json.loads(saved) if saved else {}
    os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps({**tags, INVOCATION_TAG: invocation})
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_RUN_CONTEXT", None)
        else:
            os.environ["MLFLOW_RUN_CONTEXT"] = saved


def end_runs_as_killed(invocation: str) -> list[str]:
    """End the MLflow runs of `invocation` that a stop interrupted (still running, or ended as
    FAILED by the exception unwinding them) as KILLED; returns their ids. Nothing when this
    thread started no run (the tracking store was never chosen) or the store cannot be
    reached: the stop is reported all the same."""
    mlflow = sys.modules.get("mlflow")
    try:
        last = mlflow.last_active_run() if mlflow is not None else None
        if last is None:
            return []
        client = mlflow.MlflowClient()
        runs = client.search_runs(
            [last.info.experiment_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{invocation}'"
        )
        killed = [run.info.run_id for run in runs if run.info.status in ("RUNNING", "FAILED")]
        for run_id in killed:
            client.set_terminated(run_id, status="KILLED")
    except Exception:  # noqa: BLE001 - an unreachable store must not hide the stop's one line
        return []
    return killed


# --- process trees (torchrun starts every rank in a session of its own) ----------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None when it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text[text.rindex(")") + 2 :].split()[:2]  # the name may hold spaces
    return state, int(ppid)


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it (Linux /proc; elsewhere only `pid`)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc/self/stat").exists() else ():
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(children.get(current, []))
    return tree


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child is left for its parent to reap)."""
    stat = _proc_stat(pid)
    if stat is not None:
        return stat[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def stop_process_tree(pid: int, signum: int, grace: float) -> None:
    """Stop the process tree of supervisor `pid` (torchrun's agent and its ranks): send `signum`
    to every process in it, give those below `pid` `grace` seconds to exit (to stop at a step
    and write a checkpoint), then SIGKILL what is left, the supervisor included: it has nothing
    to finish once they are gone. Nothing of the tree outlives this call by more than a moment.
    """
    tree = process_tree(pid)
    for member in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signum)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_running(member) for member in tree[1:]):
        time.sleep(0.1)
    for _ in range(50):  # a few seconds at most; SIGKILL cannot be refused
        left = [member for member in {*tree, *process_tree(pid)} if _running(member)]
        if not left:
            return
        for member in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGKILL)
        time.sleep(0.1)


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once the exit handlers (atexit) have run and the standard
    streams are flushed, skipping the interpreter's teardown of every module: for torch,
    Prefect and MLflow that takes seconds on a busy machine, and a stop must be prompt."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
