"""The distributed dedup's stages in order on a Dask client: one task per partition or home,
every stage's rows through the disk shuffle (`spill`), only counts back to this process."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lmforge.tasks.data.dedup import DuplicateReport, MinHashConfig
from lmforge.tasks.data.dedup_dask.components import (
    label_earlier,
    label_later,
    star_step,
    symmetrize,
)
from lmforge.tasks.data.dedup_dask.pairs import candidate_pairs, exact_pairs, unique_candidates
from lmforge.tasks.data.dedup_dask.plan import (
    DedupPlan,
    DistributedDedupSettings,
    DocumentFile,
    PriorIndex,
)
from lmforge.tasks.data.dedup_dask.report import DistributedDuplicates
from lmforge.tasks.data.dedup_dask.signatures import sign_chunk, sign_prior
from lmforge.tasks.data.dedup_dask.survivors import (
    decide_chunk,
    resolve_survivors,
    survivors_partition,
)
from lmforge.tasks.data.dedup_dask.verify import spill_shingle_sets, verify_partition

# Large-Star/Small-Star needs O(log^2 n) steps; far more means something is wrong.
MAX_STAR_STEPS = 200
# The stages' folders that hold the result: each chunk's rows and removed documents.
RESULT_FOLDERS = ("rows", "removed")


def _shared(plan: Any) -> Any:
    return plan


class Stages:
    """Runs a stage: `function(plan, item, root, **kwargs)` for each item, as tasks named
    `<stage>-<item>-<run>` (retried when a worker dies), and returns their results in order.
    `root.name` must be unique to the run (a task key is never reused).

    The plan (it lists every input file, so it grows with the dataset) travels once: it is
    the result of one task the stage tasks depend on, kept by each worker that runs them and
    recomputed by the scheduler if every copy dies with its worker. Sent inside each task
    instead, a 2 M-document plan (285 KB) cost each worker ~235 MiB (measured with no-op
    tasks)."""

    def __init__(self, client: Any, plan: Any, root: Path, retries: int):
        self.client, self.root, self.retries = client, str(root), retries
        self.run_id = root.name
        self.plan = client.submit(_shared, plan, key=f"plan-{uuid.uuid4().hex}", pure=False,
                                  retries=retries)  # fmt: skip

    def __call__(self, stage: str, function: Callable, items: Iterable[int],
                 **kwargs: Any) -> list:  # fmt: skip
        items = list(items)
        if not items:
            return []
        keys = [f"{stage}-{item}-{self.run_id}" for item in items]
        futures = self.client.map(function, [self.plan] * len(items), items,
                                  [self.root] * len(items), key=keys, retries=self.retries,
                                  pure=False, **kwargs)  # fmt: skip
        try:
            return self.client.gather(futures)
        finally:
            del futures  # releases the results on the workers


def worker_count(client: Any) -> int:
    """The workers the client's scheduler has now (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def find_duplicates_distributed(
    files: Sequence[DocumentFile],
    config: MinHashConfig,
    client: Any,
    spill_dir: str | Path,
    prior: PriorIndex | None = None,
    remove: bool = True,
    settings: DistributedDedupSettings = DistributedDedupSettings(),
) -> DuplicateReport:
    """`lmforge.tasks.data.dedup.find_duplicates` over `files` (in dedup order, one input file
    each) against `prior`, as tasks on the Dask `client` (`distributed.Client`): the same
    removals, survivors, reasons, statistics and kept index rows (`deduplicate_distributed`,
    read back into this process; its folder removed)."""
    result = deduplicate_distributed(files, config, client, spill_dir, prior, remove, settings)
    try:
        return result.report()
    finally:
        result.remove()


def deduplicate_distributed(
    files: Sequence[DocumentFile],
    config: MinHashConfig,
    client: Any,
    spill_dir: str | Path,
    prior: PriorIndex | None = None,
    remove: bool = True,
    settings: DistributedDedupSettings = DistributedDedupSettings(),
) -> DistributedDuplicates:
    """The distributed dedup's stages, their result left on disk for the writer.

    `spill_dir` must be reachable by every worker; a folder for this run is made in it (the
    result's `root`: the caller removes it with `remove()`; on error it is removed here).
    Raises what a task raised after its retries (ValueError when a file no longer holds the
    documents its `DocumentFile` counts)."""
    plan = DedupPlan.make(list(files), config, prior, settings, worker_count(client), remove)
    root = Path(spill_dir) / f"dedup-{uuid.uuid4().hex[:12]}"
    root.mkdir(parents=True)
    try:
        stages = Stages(client, plan, root, settings.retries)
        stats = {"documents": plan.documents, "prior_documents": plan.offset,
                 "exact_duplicates": 0, "near_duplicates": 0, "candidate_pairs": 0,
                 "verified_pairs": 0, "clusters": 0, "largest_cluster": 0}  # fmt: skip
        stages("sign-prior", sign_prior, range(plan.prior_homes))
        stages("sign", sign_chunk, range(len(plan.chunks)))
        if remove:
            stats.update(_find_removals(stages, plan))
        for stage_files in root.iterdir():  # what the writer and the report read stays
            if stage_files.name not in RESULT_FOLDERS:
                shutil.rmtree(stage_files, ignore_errors=True)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return DistributedDuplicates(plan, str(root), stats)


def _find_removals(stages: Stages, plan: DedupPlan) -> dict[str, int]:
    partitions = range(plan.partitions)
    stages("exact-pairs", exact_pairs, partitions)
    stages("candidate-pairs", candidate_pairs, range(plan.config.bands * plan.band_ranges))
    candidates = sum(stages("unique-candidates", unique_candidates, partitions))
    stages("spill-sets", spill_shingle_sets, range(plan.homes))
    verified = sum(stages("verify", verify_partition, partitions))
    stages("symmetrize", symmetrize, partitions)
    final = _converge(stages, plan)
    stages("label-earlier", label_earlier, partitions, step=final)
    stages("label-later", label_later, partitions, step=final)
    clusters = stages("survivors", survivors_partition, partitions)
    stages("resolve", resolve_survivors, range(plan.homes))
    decided = stages("decide", decide_chunk, range(len(plan.chunks)))
    return {
        "exact_duplicates": sum(exact for exact, _ in decided),
        "near_duplicates": sum(near for _, near in decided),
        "candidate_pairs": candidates,
        "verified_pairs": verified,
        "clusters": sum(part["clusters"] for part in clusters),
        "largest_cluster": max((part["largest_cluster"] for part in clusters), default=0),
    }


def _converge(stages: Stages, plan: DedupPlan) -> int:
    """Star steps until the edge set stays the same through a Large-Star and a Small-Star
    step; returns the step whose records are the converged stars."""
    digests = []
    for step in range(MAX_STAR_STEPS):
        parts = stages(f"star{step}", star_step, range(plan.partitions), step=step)
        digests.append((sum(count for count, _ in parts),
                        sum(digest for _, digest in parts) % 2**64))  # fmt: skip
        if step >= 2 and digests[-1] == digests[-2] == digests[-3]:
            return step
        if step >= 3:  # steps before the last three are no longer read
            shutil.rmtree(Path(stages.root) / f"cc-{step - 3:03d}", ignore_errors=True)
    raise RuntimeError(f"connected components did not converge in {MAX_STAR_STEPS} steps")
