"""Where a chain of stages writes, and when a finished output is reused instead of rewritten.

A chain (the `pipeline`, the `retrain` flow) gives every stage output its own folder, named by
what decides its content, under `<work_dir>/stages/<stage>/`:

- a dataset by its DataConfig (`stages/data/<digest>`): a refresh with new inputs and the same
  settings adds a version there; other settings start another folder;
- shards, training and evaluation outputs by their stage key (`flows.stage_cache.stage_key`:
  parameters, inputs' digests, code version), so no later run with other settings writes
  where a registered model version's files are. A run stopped early resumes in its folder.

`<work_dir>/<name>` (`data`, `shards`, `train`, `eval`) is a symlink to the newest output of
the stage, for people and for commands run by hand; what runs record (manifests, MLflow, model
versions) is the folder itself. Old folders are deleted only by `lmforge clean`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from prefect import task
from prefect.states import Completed
from pydantic import BaseModel

from lmforge.flows.stage_cache import STAGES_DIR, StageCache, stage_key
from lmforge.flows.tracking import child_runs_of, log_stage_manifest, section_values, stage_run
from lmforge.tracking_tags import CACHE_TAG

# Characters of a digest that name a folder: 64 bits, no collision among one work dir's runs.
FOLDER_DIGEST_CHARS = 16


def folder_digest(identity: Any) -> str:
    """A short, stable digest of `identity` (JSON-able) for a folder name."""
    payload = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:FOLDER_DIGEST_CHARS]


def point_current(work_dir: Path, name: str, target: Path) -> None:
    """Make `work_dir/name` a relative symlink to `target`, replaced atomically. A real folder
    there (an output written before stage folders existed) is moved into the stage folders
    first, never deleted."""
    link = work_dir / name
    if link.exists() and not link.is_symlink():
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept = work_dir / STAGES_DIR / name / f"before-stage-folders-{stamp}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        link.rename(kept)
        print(f"{link} is kept as {kept}")
    staged = link.with_name(f".{name}.link-{os.getpid()}")
    staged.unlink(missing_ok=True)
    staged.symlink_to(os.path.relpath(target, work_dir))
    staged.replace(link)


@task(name="reuse-stage-output", task_run_name="reuse {stage} output")
def reuse_stage_output(stage: str, sections: dict[str, BaseModel], out: str, parent_run_id: str):
    """Record a reused stage: a child MLflow run tagged `lmforge.cache=hit` with the output's
    manifest and inputs (lineage stays complete), and a Cached state in Prefect."""
    with stage_run(stage, section_values(sections), parent_run_id):
        mlflow.set_tag(CACHE_TAG, "hit")
        log_stage_manifest(out)
    print(f"{stage}: reusing {out} (same inputs, parameters and code)")
    return Completed(name="Cached", message=f"reused {out}")


def run_or_reuse(
    stage: str,
    stage_flow: Callable[..., Any],
    sections: dict[str, BaseModel],
    out: str,
    inputs: list[dict[str, Any]],
    cache: StageCache,
    parent_run_id: str,
    record: str | None = None,
    key: str | None = None,
) -> str:
    """Run `stage_flow(**sections)` as a child of MLflow run `parent_run_id`, unless `cache`
    holds its finished output in `out`; returns "ran" or "cached". `record` names the stage's
    entry in `cache` (default: the stage), for a work dir that runs a stage more than once;
    `key` is the work's identity (default: `stage_key` of the sections and inputs)."""
    key = key or stage_key(stage, section_values(sections), inputs)
    if cache.lookup(record or stage, key, out) is not None:
        reuse_stage_output(stage, sections, out, parent_run_id)
        return "cached"
    with child_runs_of(parent_run_id):
        stage_flow(**sections)
    cache.store(record or stage, key, out)
    return "ran"


@dataclass
class StageChain:
    """Stages run one after another under `work_dir`, as children of MLflow run
    `parent_run_id`, each into its own folder (see the module's docstring)."""

    work_dir: Path
    parent_run_id: str
    outcomes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cache = StageCache(self.work_dir)

    def run(
        self,
        stage: str,
        stage_flow: Callable[..., Any],
        sections: Mapping[str, BaseModel],
        inputs: list[dict[str, Any]],
        name: str,
        folder_identity: Any = None,
    ) -> Path:
        """Run (or reuse) `stage` into `stages/<name>/<digest>`, its `run` section's `out` set
        to that folder, and point `<work_dir>/<name>` at it; returns the folder. The digest is
        of `folder_identity` when given (a dataset's settings), else of the stage key."""
        run = sections["run"]
        # The key is of the sections as given (the stable link as `out`): the folder follows it.
        key = stage_key(stage, section_values(sections), inputs)
        digest = folder_digest(folder_identity) if folder_identity is not None else key
        out = self.work_dir / STAGES_DIR / name / digest[:FOLDER_DIGEST_CHARS]
        placed = {**sections, "run": run.model_copy(update={"out": str(out)})}
        # Linked before the stage runs: `<work_dir>/train` shows the checkpoints as they come.
        out.parent.mkdir(parents=True, exist_ok=True)
        point_current(self.work_dir, name, out)
        self.outcomes[stage] = run_or_reuse(
            stage, stage_flow, placed, str(out), inputs, self.cache, self.parent_run_id,
            record=f"{stage}-{key[:FOLDER_DIGEST_CHARS]}", key=key,
        )  # fmt: skip
        return out


def stage_folders(work_dir: Path) -> dict[str, list[Path]]:
    """Every stage output folder under `work_dir/stages`, by link name, newest first."""
    root = work_dir / STAGES_DIR
    folders: dict[str, list[Path]] = {}
    for stage_root in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
        found = [p for p in stage_root.iterdir() if p.is_dir()]
        folders[stage_root.name] = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    return folders


def removable_folders(work_dir: str | Path, keep: int = 1) -> list[Path]:
    """The stage folders `lmforge clean` deletes: all but the one each link points at and the
    `keep` newest of each stage. A registered model version stays loadable from MLflow (its
    files are logged there); its lineage reads the manifests MLflow holds."""
    work_dir = Path(work_dir).resolve()
    removable = []
    for name, folders in stage_folders(work_dir).items():
        link = work_dir / name
        current = link.resolve() if link.is_symlink() else None
        removable += [folder for folder in folders[keep:] if folder != current]
    return removable
