"""The distributed result: left in its spill folder for the distributed writer
(`DistributedDuplicates`, `write`), or read back as the single-process `DuplicateReport`.

`assemble_report` reads it chunk by chunk from the stages' files, in node order: the removed documents (sorted by
id, as `find_duplicates` sorts them) and the index rows of the kept ones. This is the one step
whose memory grows with the run - the same rows `find_duplicates` returns - and it runs where
the report is used (the flow's writer).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from lmforge.tasks.data.dedup import HAS_BANDS, Duplicate, DuplicateReport, KeptSignatures
from lmforge.tasks.data.dedup_dask.plan import DedupPlan
from lmforge.tasks.data.dedup_dask.signatures import chunk_rows
from lmforge.tasks.data.dedup_dask.spill import column
from lmforge.tasks.data.dedup_dask.survivors import chunk_removed

if TYPE_CHECKING:
    from lmforge.tasks.data.dedup_dask.dask_dedup import DaskDedup


@dataclass
class DistributedDuplicates:
    """A distributed dedup's result where the stages left it: each chunk's rows (`rows/`) and
    removed documents (`removed/`) under `root`, beside the `plan` and the statistics. Nothing
    per document is held here; `remove` deletes the folder once the version is written.
    `cluster`: where the workers that read it run; `base_version`: as `DuplicateReport`'s."""

    plan: DedupPlan
    root: str
    stats: dict[str, Any]
    cluster: DaskDedup | None = None
    base_version: int = 0

    def report(self) -> DuplicateReport:
        """The result as the single-process `DuplicateReport` (every removal, every kept
        document's index row, in this process)."""
        report = assemble_report(self.plan, Path(self.root), self.stats)
        report.base_version = self.base_version
        return report

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def assemble_report(plan: DedupPlan, root: Path, stats: dict[str, int]) -> DuplicateReport:
    """`stats` in `find_duplicates`'s order and meaning; duplicates and kept rows from `root`."""
    duplicates: list[Duplicate] = []
    ids: list[str] = []
    keys, bands, has_bands = [], [], []
    for chunk in range(len(plan.chunks)):
        rows = chunk_rows(root, chunk)
        removed = chunk_removed(root, chunk)
        chunk_ids = rows.column("id").to_pylist()
        at = column(removed, "node", np.int64) - plan.chunk_start(chunk)
        for row, survivor, reason in zip(at.tolist(), removed.column("duplicate_of").to_pylist(),
                                         removed.column("reason").to_pylist(), strict=True):  # fmt: skip
            duplicates.append(Duplicate(chunk_ids[row], survivor, reason))
        keep = np.ones(rows.num_rows, bool)
        keep[at] = False
        ids.extend(doc_id for doc_id, kept in zip(chunk_ids, keep.tolist()) if kept)
        keys.append(np.stack((column(rows, "k0", np.uint64), column(rows, "k1", np.uint64)),
                             axis=1)[keep])  # fmt: skip
        bands.append(np.stack([column(rows, f"band{b}", np.uint64)
                               for b in range(plan.config.bands)], axis=1)[keep])  # fmt: skip
        has_bands.append(((column(rows, "flags", np.uint8) & HAS_BANDS) != 0)[keep])
    duplicates.sort(key=lambda d: d.id)
    kept = KeptSignatures(
        ids,
        np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64),
        np.concatenate(bands) if bands else np.zeros((0, plan.config.bands), np.uint64),
        np.concatenate(has_bands) if has_bands else np.zeros(0, bool),
    )
    return DuplicateReport(duplicates, stats, kept)
