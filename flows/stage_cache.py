"""Resuming the pipeline: a stage whose finished output was made from the same inputs, parameters
and code is reused instead of recomputed, so a rerun after a crash starts where the crash was.

A stage's cache key is the sha256 of its name, its parameters, its inputs' digests (WARC files'
sha256, upstream stages' manifest sha256) and `code_version()`. After a stage completes the
pipeline records `{key, manifest_sha256}` under `<work_dir>/.stage-cache/<stage>.json`; a later
run reuses the output only if the key matches and the directory still holds that very manifest
with every output file it lists, at its listed size.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.manifest import MANIFEST_NAME, manifest_digest, read_manifest

CACHE_DIR_NAME = ".stage-cache"
# A chain's stage outputs: `<work_dir>/stages/<stage>/<digest>` (see `flows.stage_outputs`).
STAGES_DIR = "stages"
# Every installed lmforge package: an edit to any of them can change what a stage produces.
SOURCE_PACKAGES = ("lmforge", "lmforge.flows", "lmforge.tasks", "lmforge.model")


@functools.cache
def code_version() -> str:
    """lmforge's version plus a digest of its installed source files (and packaged resources)."""
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for root in map(Path, importlib.import_module(package).__path__):
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    digest.update(f"{package}/{path.relative_to(root)}\0".encode())
                    digest.update(path.read_bytes())
    return f"{__version__}+src.{digest.hexdigest()[:16]}"


def stage_key(stage: str, params: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]]) -> str:
    """The identity of one stage's work: same key, same output."""
    payload = {"stage": stage, "params": params, "inputs": inputs, "code": code_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class StageCache:
    """The records of completed stages of one pipeline work directory."""

    def __init__(self, work_dir: str | Path) -> None:
        self.root = Path(work_dir) / CACHE_DIR_NAME

    def _record(self, stage: str) -> Path:
        return self.root / f"{stage}.json"

    def lookup(self, stage: str, key: str, out_dir: str | Path) -> dict[str, Any] | None:
        """The manifest of `out_dir` if it is the finished output of work `key`, else None."""
        record_path = self._record(stage)
        out_dir = Path(out_dir)
        if not record_path.is_file() or not (out_dir / MANIFEST_NAME).is_file():
            return None
        record = json.loads(record_path.read_text())
        if record.get("key") != key or record.get("manifest_sha256") != manifest_digest(out_dir):
            return None
        manifest = read_manifest(out_dir)
        for entry in manifest.get("outputs", []):
            path = out_dir / entry["path"]
            # Sizes, not digests: re-hashing a large dataset would cost most of what it saves.
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                return None
        return manifest

    def store(self, stage: str, key: str, out_dir: str | Path) -> None:
        """Record that `out_dir`'s current manifest is the output of work `key`."""
        self.root.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "manifest_sha256": manifest_digest(out_dir), "code": code_version()}
        tmp = self._record(stage).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self._record(stage))
