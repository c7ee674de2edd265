"""Stage outputs: a directory built under a temporary name, described by `manifest.json`, then
renamed into place, so a crash never leaves half a dataset that looks whole.

The manifest is the unit of lineage: what went in (paths and digests), with which parameters,
what came out (files and digests), counts, the code version and the wall-clock span.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.errors import LmforgeError, OutputRefused

MANIFEST_NAME = "manifest.json"
# Where a versioned stage directory keeps the manifests of its earlier versions.
VERSIONS_DIR = "versions"
# Where a version is written inside a versioned stage directory until its commit; the leading
# dot hides it from dataset readers (pyarrow skips names starting with "." or "_").
UNCOMMITTED_PREFIX = ".uncommitted-"


class ManifestError(LmforgeError, RuntimeError):
    """A stage directory is missing, incomplete or does not match its manifest."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def input_sha256(path: str | Path) -> str:
    """sha256 of an input file, hashed once per process while its size, mtime and inode stay
    the same: a refresh looks at each WARC file's digest several times (the ledger, the per-file
    cache key, the file's result). Outputs are verified with `sha256_file`, never from memory."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _input_sha256(str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=4096)
def _input_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return sha256_file(path)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def describe_input(path: str | Path) -> dict[str, Any]:
    """A file is identified by its sha256; a stage directory by its manifest's sha256."""
    path = Path(path)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return {
            "path": str(path.resolve()),
            "stage": read_manifest(path)["stage"],
            "manifest_sha256": sha256_file(path / MANIFEST_NAME),
        }
    if path.is_dir():  # e.g. an intermediate checkpoint: digest of its files' names and digests
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path)}\0{sha256_file(file)}\n".encode())
        return {"path": str(path.resolve()), "sha256": digest.hexdigest()}
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def read_manifest(stage_dir: str | Path, stage: str | None = None) -> dict[str, Any]:
    """The manifest of a finished stage output (of `stage`, when given); ManifestError naming
    the folder when there is none, it is not JSON, or it is another stage's output."""
    manifest_path = Path(stage_dir) / MANIFEST_NAME
    if not Path(stage_dir).exists():
        raise ManifestError(f"{stage_dir} does not exist: run the stage that produces it first")
    if not manifest_path.is_file():
        raise ManifestError(
            f"{stage_dir} has no {MANIFEST_NAME}: it is not a finished lmforge stage output "
            "(run the stage that produces it first)"
        )
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ManifestError(
            f"{manifest_path} is not valid JSON ({error}): the stage output is damaged; "
            "run the stage that produces it again"
        ) from error
    if not isinstance(manifest, dict):
        raise ManifestError(
            f"{manifest_path} is not an lmforge manifest (a JSON object): the stage output is "
            "damaged; run the stage that produces it again"
        )
    if stage is not None and manifest.get("stage") != stage:
        raise ManifestError(
            f"{stage_dir} holds a {manifest.get('stage')!r} output, not a {stage!r} one: pass "
            f"the folder that {stage} wrote"
        )
    return manifest


def manifest_digest(stage_dir: str | Path) -> str:
    return sha256_file(Path(stage_dir) / MANIFEST_NAME)


def verify_outputs(stage_dir: str | Path) -> None:
    """Raise ManifestError naming the first output file whose digest no longer matches."""
    stage_dir = Path(stage_dir)
    for entry in read_manifest(stage_dir)["outputs"]:
        path = stage_dir / entry["path"]
        if not path.is_file():
            raise ManifestError(f"{path} is listed in the manifest but missing")
        if sha256_file(path) != entry["sha256"]:
            raise ManifestError(f"{path} is corrupt: its sha256 does not match the manifest")


@dataclass
class StageWriter:
    """Handed to the body of `stage_output`: write files under `path`, fill `counts` and `extra`."""

    stage: str
    path: Path
    params: dict[str, Any]
    inputs: list[dict[str, Any]]
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    started_at: str = field(default_factory=utc_now)
    # Versioned stages (`stage_version`): this version's number, the parent version's manifest
    # (None for version 1), and parent outputs to leave out of the new manifest (files that
    # are gone and were rebuilt under new names).
    version: int = 1
    parent: dict[str, Any] | None = None
    retired_outputs: set[str] = field(default_factory=set)
    # sha256 of files under `path` (by relative path) that their writers hashed from disk after
    # writing them, where the files are (Dask workers): the manifest does not read them again.
    file_digests: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return build_manifest(
            self.path, self.stage, self.params, self.inputs, self.counts, self.extra,
            self.started_at, digests=self.file_digests,
        )


def build_manifest(
    root: Path,
    stage: str,
    params: dict[str, Any],
    inputs: list[dict[str, Any]],
    counts: dict[str, Any],
    extra: dict[str, Any] | None = None,
    started_at: str | None = None,
    files: Iterable[Path] | None = None,
    digests: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest of `root`; `files` (default: every file under it) become its outputs, each
    hashed here unless `digests` has its sha256 (by path relative to `root`)."""
    candidates = sorted(root.rglob("*")) if files is None else sorted(Path(f) for f in files)
    digests = digests or {}
    outputs = []
    for p in candidates:
        if p.is_file() and p.name != MANIFEST_NAME:
            relative = str(p.relative_to(root))
            sha256 = digests.get(relative) or sha256_file(p)
            outputs.append({"path": relative, "bytes": p.stat().st_size, "sha256": sha256})
    finished_at = utc_now()
    return {
        "stage": stage,
        "lmforge_version": __version__,
        "started_at": started_at or finished_at,
        "finished_at": finished_at,
        "inputs": inputs,
        "params": params,
        "counts": counts,
        "outputs": outputs,
        **(extra or {}),
    }


def write_manifest(stage_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest.json` last and atomically: for stages that build their directory in place
    (training keeps resumable checkpoints there), its presence is what marks the output finished."""
    stage_dir = Path(stage_dir)
    tmp = stage_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(stage_dir / MANIFEST_NAME)
    return stage_dir / MANIFEST_NAME


@contextlib.contextmanager
def stage_output(
    out_dir: str | Path,
    stage: str,
    params: dict[str, Any],
    inputs: Iterable[str | Path | dict[str, Any]] = (),
) -> Iterator[StageWriter]:
    """Build a stage directory atomically.

    `out_dir` is claimed first (`claim_output_dir`: OutputRefused unless it is new, empty or an
    earlier `stage` output, and clear of the inputs). The body writes into `writer.path` (a
    sibling temporary directory). On success the manifest is written and the directory renamed
    to `out_dir`, replacing an older output only at that moment (claimed again then); on error
    the temporary directory is removed and `out_dir` is left as it was.
    """
    inputs = list(inputs)
    out_dir = Path(out_dir)
    claim_output_dir(out_dir, stage, inputs)
    described = [item if isinstance(item, dict) else describe_input(item) for item in inputs]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    writer = StageWriter(stage=stage, path=tmp_dir, params=params, inputs=described)
    try:
        yield writer
        write_manifest(tmp_dir, writer.manifest())
        replace_directory(tmp_dir, out_dir, functools.partial(claim_output_dir, stage=stage))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    writer.path = out_dir


def claim_output_dir(
    out_dir: str | Path, stage: str, inputs: Iterable[str | Path | dict[str, Any]] = ()
) -> Path:
    """Check, before any work, that `out_dir` may receive a `stage` output; returns it resolved.

    Allowed: a folder that does not exist, an empty folder, or a finished lmforge output whose
    manifest names the same `stage` (the command's contract is to replace or extend it).
    Refused with `OutputRefused` naming the folder: anything else (a user's folder, another
    stage's output, a manifest that is not lmforge's), and any output that is, contains or lies
    inside one of `inputs` (paths, or described inputs with a "path"; URLs are skipped).
    """
    out = Path(out_dir).expanduser().resolve()
    source = overlapping_input(out, inputs)
    if source is not None:
        raise OutputRefused(
            f"output folder {out} overlaps the input {source}: writing it would replace or "
            "change the input; choose an output folder outside the inputs"
        )
    if out.exists() and not out.is_dir():
        raise OutputRefused(f"output {out} is a file, not a folder: choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        found = output_stage(out)
        if found != stage:
            what = f"a {found!r} output" if found else "files that are not an lmforge output"
            raise OutputRefused(
                f"output folder {out} holds {what}; lmforge only replaces its own {stage!r} "
                "outputs: choose an empty or new output folder (or remove this one yourself)"
            )
    return out


def overlapping_input(
    output: str | Path, inputs: Iterable[str | Path | dict[str, Any]]
) -> Path | None:
    """The first of `inputs` (paths, or described inputs with a "path"; URLs are skipped) that
    `output` is, contains or lies inside, resolved; None when the output is clear of them."""
    out = Path(output).expanduser().resolve()
    for item in inputs:
        path = item.get("path") if isinstance(item, dict) else item
        if path is None or "://" in str(path):
            continue
        source = Path(path).expanduser().resolve()
        if source == out or out in source.parents or source in out.parents:
            return source
    return None


def output_stage(directory: Path) -> str | None:
    """The stage a folder's manifest names, or None when it has no readable lmforge manifest."""
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        found = json.loads(manifest.read_text()).get("stage")
    except (ValueError, AttributeError):  # garbage in manifest.json: not lmforge's
        return None
    return found if isinstance(found, str) else None


def replace_directory(new: Path, target: Path, claim: Callable[[Path], object]) -> None:
    """Move `new` to `target`. An existing `target` is first handed to `claim`, which raises
    (OutputRefused) unless it may be replaced - `claim_output_dir(target, stage)` for stage
    outputs - then swapped out and removed after the move: nothing else is ever deleted."""
    if target.exists():
        claim(target)
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(retired)
        new.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        new.rename(target)


class OutputLocked(LmforgeError):
    """Another process (or thread) is writing the output folder."""


_held_locks: set[tuple[str, int]] = set()  # (lock file, thread) of the locks held here


@contextlib.contextmanager
def output_lock(out_dir: str | Path, wait: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of `out_dir` (an flock on `.<name>.lock` beside it) while the
    block runs. Reentrant within a thread, so a refresh can hold it from start to finish while
    `stage_version` takes it again to commit. `wait=False` raises OutputLocked at once, naming
    the folder and the holder (pid, host, start time), when another holder has it; the kernel
    drops the lock of a process that dies, so a crash never leaves the folder locked."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    key = (str(lock_path), threading.get_ident())
    if key in _held_locks:  # this thread holds it already, further up the stack
        yield
        return
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "holder unknown"
            raise OutputLocked(
                f"output folder {out_dir} is being written by another refresh ({holder}); "
                "wait for it to finish, or choose another --out"
            ) from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {utc_now()}\n")
        lock.flush()
        _held_locks.add(key)
        try:
            yield
        finally:
            _held_locks.discard(key)


def version_name(version: int) -> str:
    """`v00003`: the tag a versioned stage puts in the names of the files of version 3."""
    return f"v{version:05d}"


def manifest_version(manifest: dict[str, Any]) -> int:
    """The version a manifest describes; manifests from before versioning count as version 1."""
    return int(manifest.get("version", 1))


@contextlib.contextmanager
def stage_version(
    out_dir: str | Path,
    stage: str,
    params: dict[str, Any],
    inputs: Iterable[str | Path | dict[str, Any]] = (),
) -> Iterator[StageWriter]:
    """Add the next version to a versioned stage directory, never rewriting earlier files.

    Without a manifest in `out_dir` this is version 1, built like `stage_output` (a temporary
    sibling renamed into place). Otherwise `out_dir` must be a `stage` output clear of the
    inputs (`claim_output_dir`, OutputRefused) and its manifest is the parent: leftovers of an
    unfinished version (files under sub-directories that the parent does not list) are removed
    first, and the body writes its new files under `writer.path`, a hidden staging folder
    `out_dir/.uncommitted-vNNNNN/` laid out like `out_dir` (readers such as
    `pq.read_table(out_dir / "docs")` skip names starting with a dot, and never look there),
    with version-specific names (`version_name(writer.version)`). On success the parent's
    manifest is kept as `versions/vNNNNN.json`, the new files are renamed to their places in
    `out_dir` and a new manifest - outputs = the parent's outputs + the new files, `version`,
    `parent_version` naming the parent's manifest and its sha256 - replaces `manifest.json`
    atomically. That rename is the commit: until it, a crash leaves files that no manifest
    lists and the next version removes; on error they are removed at once. An exclusive lock
    beside `out_dir` keeps two writers apart.
    """
    out_dir = Path(out_dir)
    with output_lock(out_dir):
        if not (out_dir / MANIFEST_NAME).is_file():
            with stage_output(out_dir, stage, params, inputs) as writer:
                writer.extra.update({"version": 1, "parent_version": None})
                yield writer
            return
        inputs = list(inputs)
        claim_output_dir(out_dir, stage, inputs)
        parent = read_manifest(out_dir)
        remove_uncommitted_files(out_dir, parent)
        described = [item if isinstance(item, dict) else describe_input(item) for item in inputs]
        version = manifest_version(parent) + 1
        staging = out_dir / f"{UNCOMMITTED_PREFIX}{version_name(version)}"
        staging.mkdir()
        writer = StageWriter(stage=stage, path=staging, params=params, inputs=described,
                             version=version, parent=parent)  # fmt: skip
        try:
            yield writer
            _commit_version(out_dir, writer)
        except BaseException:
            remove_uncommitted_files(out_dir, parent)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        writer.path = out_dir


def remove_uncommitted_files(stage_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """Delete files under `stage_dir`'s sub-directories that `manifest` does not list (what an
    unfinished version left behind, its staging folder included), and directories left empty;
    returns the deleted files."""
    listed = {entry["path"] for entry in manifest["outputs"]}
    removed = []
    for staging in stage_dir.glob(f"{UNCOMMITTED_PREFIX}*"):
        removed += [path for path in staging.rglob("*") if path.is_file()]
        shutil.rmtree(staging)
    for path in sorted(stage_dir.rglob("*"), reverse=True):  # children before their directory
        relative = path.relative_to(stage_dir)
        if len(relative.parts) < 2:
            continue
        if path.is_file() and str(relative) not in listed:
            path.unlink()
            removed.append(path)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return removed


def _commit_version(out_dir: Path, writer: StageWriter) -> None:
    """Publish the staged files of `writer` under their final names, then the manifest."""
    staging = writer.path
    parent = writer.parent or {}
    parent_outputs = [e for e in parent["outputs"] if e["path"] not in writer.retired_outputs]
    parent_copy = staging / VERSIONS_DIR / f"{version_name(writer.version - 1)}.json"
    parent_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_dir / MANIFEST_NAME, parent_copy)
    new_files = sorted(p for p in staging.rglob("*") if p.is_file())
    # Digests first, from the staged files: the renames below are all that happens between the
    # first new file appearing in `out_dir` and the manifest that lists it.
    manifest = build_manifest(staging, writer.stage, writer.params, writer.inputs, writer.counts,
                              writer.extra, writer.started_at, files=new_files,
                              digests=writer.file_digests)  # fmt: skip
    manifest["outputs"] = parent_outputs + manifest["outputs"]
    manifest["version"] = writer.version
    manifest["parent_version"] = {
        "version": writer.version - 1,
        "manifest": str(parent_copy.relative_to(staging)),
        "sha256": sha256_file(parent_copy),
    }
    for path in new_files:
        final = out_dir / path.relative_to(staging)
        final.parent.mkdir(parents=True, exist_ok=True)
        path.rename(final)
    write_manifest(out_dir, manifest)
