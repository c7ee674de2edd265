"""Deduplication as distributed stages on Dask, with results identical to one process.

`find_duplicates_distributed` gives exactly what `lmforge.tasks.data.dedup.find_duplicates`
gives - the same removed documents, `duplicate_of`, reasons, statistics and kept index rows -
for any number of workers and partitions, on a LocalCluster or a scheduler address. Each stage
is one task per partition; rows move between stages as Arrow files in a spill directory
(`spill`), so a worker holds one partition at a time, never the dataset:

1. `signatures`: per chunk of whole files (and per prior index row group), keys and band
   hashes by `dedup`'s own first pass, sent to key ranges and (band, hash range) partitions.
2. `pairs`: exact pairs per key range, candidate pairs per band bucket (same window rule),
   each candidate pair once per pair partition.
3. `verify`: shingle sets spilled where the documents are, exact Jaccard per pair partition.
4. `components`: connected components of the exact and verified pairs by Large-Star /
   Small-Star steps over node partitions; each pair labelled with its component.
5. `survivors`: the single-process survivor rule (`dedup._survivors`, file by file, a chain
   through a document removed in an earlier file not followed) on each component's pairs
   alone - exact, because whether a document is still kept depends only on pairs in its own
   component; survivors resolved to ids and reasons where they live.

The result stays in the spill folder (`report.DistributedDuplicates`): `write` writes the
dataset version from it on the workers (kept and removed parts, index rows; the flow commits
the manifest), or `report.assemble_report` reads it back as a `DuplicateReport`.
`dask_dedup` chooses between this and the single-process path and starts the cluster.
"""

from lmforge.tasks.data.dedup_dask.dask_dedup import (
    DaskDedup,
    dask_client,
    prefers_distributed_dedup,
    prior_index,
)
from lmforge.tasks.data.dedup_dask.plan import (
    DedupPlan,
    DistributedDedupSettings,
    DocumentFile,
    PriorIndex,
)
from lmforge.tasks.data.dedup_dask.report import DistributedDuplicates
from lmforge.tasks.data.dedup_dask.run import deduplicate_distributed, find_duplicates_distributed

__all__ = ["DaskDedup", "DedupPlan", "DistributedDedupSettings", "DistributedDuplicates",
           "DocumentFile", "PriorIndex", "dask_client", "deduplicate_distributed",
           "find_duplicates_distributed", "prefers_distributed_dedup", "prior_index"]  # fmt: skip
