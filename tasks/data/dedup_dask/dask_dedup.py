"""Choosing and starting the distributed dedup: when the refresh uses it, which cluster it
runs on, and the prior index as row groups the workers read."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from lmforge.tasks.data.dedup import DuplicateReport, MinHashConfig
from lmforge.tasks.data.dedup_dask.plan import DistributedDedupSettings, DocumentFile, PriorIndex
from lmforge.tasks.data.dedup_dask.report import DistributedDuplicates
from lmforge.tasks.data.dedup_dask.run import deduplicate_distributed
from lmforge.tasks.data.dedup_index import index_files, index_is_usable, rebuild_index

# Rows per row group of a rebuilt index: one prior task reads one group.
REBUILT_ROWS_PER_GROUP = 1 << 20
# A worker's interpreter, numpy, pyarrow and code point tables, beside the partition budget.
WORKER_BASELINE_BYTES = 512 * 2**20


def prefers_distributed_dedup(runner: str, forced: bool, documents: int, above: int) -> bool:
    """Whether a refresh deduplicates on Dask: only with the Dask runner, when asked for, or
    when the new documents reach `above` (below it the single process is faster: no cluster
    to start, nothing spilled)."""
    return runner == "dask" and (forced or documents >= above)


@contextlib.contextmanager
def dask_client(address: str | None = None, workers: int = 0,
                worker_memory_bytes: int = DistributedDedupSettings().worker_memory_bytes,
                processes: bool = True) -> Iterator[Any]:  # fmt: skip
    """A `distributed.Client` on the scheduler at `address`, or on a LocalCluster of `workers`
    single-threaded workers (0: one per core), each limited to `worker_memory_bytes` (the
    partition budget) + WORKER_BASELINE_BYTES, closed after."""
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    workers = workers or len(os.sched_getaffinity(0)) or 1
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                      memory_limit=worker_memory_bytes + WORKER_BASELINE_BYTES,
                      dashboard_address=None) as cluster, \
            Client(cluster) as client:  # fmt: skip
        yield client


def prior_index(data_dir: str | os.PathLike[str], config: MinHashConfig,
                spill_dir: str | os.PathLike[str]) -> PriorIndex:  # fmt: skip
    """The dataset's committed index files as row groups; when they are missing or were built
    with other settings, the index rebuilt from the kept documents (in this process, as the
    single-process path does) and written to `spill_dir` for the workers."""
    if index_is_usable(data_dir, config):
        return PriorIndex.of_files(data_dir, index_files(data_dir))
    path = Path(spill_dir) / "rebuilt-index.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rebuild_index(data_dir, config), path, row_group_size=REBUILT_ROWS_PER_GROUP)
    return PriorIndex.of_files(data_dir, [path])


@dataclass(frozen=True)
class DaskDedup:
    """Where the distributed dedup runs: the scheduler at `address`, else a LocalCluster of
    `workers` processes started for it; `spill_dir`: the shuffle's folder, reachable by every
    worker (the refresh's staging folder is)."""

    spill_dir: str
    address: str | None = None
    workers: int = 0
    settings: DistributedDedupSettings = field(default_factory=DistributedDedupSettings)

    def find_duplicates(self, files: Sequence[DocumentFile], config: MinHashConfig,
                        prior_dir: str | os.PathLike[str] | None,
                        remove: bool = True) -> DuplicateReport:  # fmt: skip
        """`find_duplicates_distributed` against the dataset in `prior_dir` (None: none)."""
        result = self.deduplicate(files, config, prior_dir, remove)
        try:
            return result.report()
        finally:
            result.remove()

    def deduplicate(self, files: Sequence[DocumentFile], config: MinHashConfig,
                    prior_dir: str | os.PathLike[str] | None,
                    remove: bool = True) -> DistributedDuplicates:  # fmt: skip
        """The same, its result left in `spill_dir` for the workers that write the version
        (`dedup_dask.write`); remove it with `remove()` afterwards."""
        prior = prior_index(prior_dir, config, self.spill_dir) if prior_dir is not None else None
        with self.client() as client:
            result = deduplicate_distributed(files, config, client, self.spill_dir, prior,
                                             remove, self.settings)  # fmt: skip
        result.cluster = self
        return result

    def client(self) -> contextlib.AbstractContextManager[Any]:
        """A client of this cluster (`dask_client`)."""
        return dask_client(self.address, self.workers, self.settings.worker_memory_bytes)
