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
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmforge import __version__

MANIFEST_NAME = "manifest.json"
# Where a versioned stage directory keeps the manifests of its earlier versions.
VERSIONS_DIR = "versions"


class ManifestError(RuntimeError):
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


def read_manifest(stage_dir: str | Path) -> dict[str, Any]:
    manifest_path = Path(stage_dir) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ManifestError(
            f"{stage_dir} has no {MANIFEST_NAME}: it is not a finished lmforge stage output "
            "(run the stage that produces it first)"
        )
    return json.loads(manifest_path.read_text())


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

    def manifest(self) -> dict[str, Any]:
        return build_manifest(
            self.path, self.stage, self.params, self.inputs, self.counts, self.extra, self.started_at
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
) -> dict[str, Any]:
    """The manifest of `root`; `files` (default: every file under it) become its outputs."""
    candidates = sorted(root.rglob("*")) if files is None else sorted(Path(f) for f in files)
    outputs = [
        {"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in candidates
        if p.is_file() and p.name != MANIFEST_NAME
    ]
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

    The body writes into `writer.path` (a sibling temporary directory). On success the manifest is
    written and the directory renamed to `out_dir`, replacing an older output only at that moment;
    on error the temporary directory is removed and `out_dir` is left as it was.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    described = [item if isinstance(item, dict) else describe_input(item) for item in inputs]
    writer = StageWriter(stage=stage, path=tmp_dir, params=params, inputs=described)
    try:
        yield writer
        write_manifest(tmp_dir, writer.manifest())
        replace_directory(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    writer.path = out_dir


def replace_directory(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing `target` is swapped out first and removed after."""
    if target.exists():
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(retired)
        new.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        new.rename(target)


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
    sibling renamed into place). Otherwise the current manifest is the parent (its stage must
    be `stage`): leftovers of an unfinished version (files under sub-directories that the
    parent does not list) are removed first, the body writes its new files into `out_dir`
    itself (`writer.path`) under version-specific names (`version_name(writer.version)`), and
    on success the parent's manifest is kept as `versions/vNNNNN.json` and a new manifest -
    outputs = the parent's outputs + the new files, `version`, `parent_version` naming the
    parent's manifest and its sha256 - replaces `manifest.json` atomically. That rename is the
    commit: readers that go by the manifest never see a half-written version, and on error
    the new files are removed. An exclusive lock beside `out_dir` keeps two writers apart.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out_dir / MANIFEST_NAME).is_file():
            with stage_output(out_dir, stage, params, inputs) as writer:
                writer.extra.update({"version": 1, "parent_version": None})
                yield writer
            return
        parent = read_manifest(out_dir)
        if parent.get("stage") != stage:
            raise ManifestError(
                f"{out_dir} holds a {parent.get('stage')!r} output, not {stage!r}: "
                "choose another output directory"
            )
        remove_uncommitted_files(out_dir, parent)
        described = [item if isinstance(item, dict) else describe_input(item) for item in inputs]
        writer = StageWriter(stage=stage, path=out_dir, params=params, inputs=described,
                             version=manifest_version(parent) + 1, parent=parent)  # fmt: skip
        try:
            yield writer
            _commit_version(out_dir, writer)
        except BaseException:
            remove_uncommitted_files(out_dir, parent)
            raise


def remove_uncommitted_files(stage_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """Delete files under `stage_dir`'s sub-directories that `manifest` does not list (what an
    unfinished version left behind), and directories left empty; returns the deleted files."""
    listed = {entry["path"] for entry in manifest["outputs"]}
    removed = []
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
    parent = writer.parent or {}
    parent_outputs = [e for e in parent["outputs"] if e["path"] not in writer.retired_outputs]
    parent_copy = out_dir / VERSIONS_DIR / f"{version_name(writer.version - 1)}.json"
    parent_copy.parent.mkdir(exist_ok=True)
    shutil.copyfile(out_dir / MANIFEST_NAME, parent_copy)
    listed = {entry["path"] for entry in parent_outputs}
    new_files = [
        p for p in out_dir.rglob("*")
        if p.is_file() and len(p.relative_to(out_dir).parts) > 1
        and str(p.relative_to(out_dir)) not in listed
    ]  # fmt: skip
    manifest = build_manifest(out_dir, writer.stage, writer.params, writer.inputs, writer.counts,
                              writer.extra, writer.started_at, files=new_files)  # fmt: skip
    manifest["outputs"] = parent_outputs + manifest["outputs"]
    manifest["version"] = writer.version
    manifest["parent_version"] = {
        "version": writer.version - 1,
        "manifest": str(parent_copy.relative_to(out_dir)),
        "sha256": sha256_file(parent_copy),
    }
    write_manifest(out_dir, manifest)
