"""What a distributed dedup works on and how it is cut: the candidate files (in dedup order),
the prior index's row groups, their node numbers, and partition counts chosen from the data
size and a per-worker memory budget.

Nodes are numbered as in `lmforge.tasks.data.dedup.find_duplicates`: prior index rows first
(0..p-1, their `seq`), then this run's documents file by file (p..p+n-1), so a smaller number is
a document seen earlier. A *home* is where a node's text and id live: a prior row group or a
chunk (consecutive whole files: "first with its text in its file" is decided inside one task).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from lmforge.tasks.data.dedup import MinHashConfig
from lmforge.tasks.data.dedup_index import DedupIndexError
from lmforge.tasks.data.filters.text_units import mix64

# Bytes a worker holds per row of a key, band or edge partition while sorting it (the row, the
# numpy copies, argsort's indices): what the partition counts are sized by.
BYTES_PER_PARTITION_ROW = 128
BYTES_PER_BAND_ROW = 64


@dataclass(frozen=True)
class DocumentFile:
    """One file of candidates (Parquet with `id`, `text`, `lang`, `declared_lang`), deduplicated
    as one input file named `source`; `documents`: its row count."""

    path: str
    source: str
    documents: int


@dataclass(frozen=True)
class PriorSlice:
    """One row group of a prior index file: rows `start` .. `start + rows - 1` by `seq`."""

    path: str
    row_group: int
    start: int
    rows: int


@dataclass(frozen=True)
class PriorIndex:
    """The kept documents of earlier versions: index files (`dedup_index`) read one row group
    at a time by the workers; texts for verification are read from `data_dir`."""

    data_dir: str
    slices: tuple[PriorSlice, ...] = ()

    @property
    def documents(self) -> int:
        return sum(s.rows for s in self.slices)

    @classmethod
    def of_files(cls, data_dir: str | os.PathLike[str], paths: list[Path]) -> PriorIndex:
        """The row groups of `paths`, ordered by `seq`, from each group's `seq` statistics.
        Raises DedupIndexError when the rows are not numbered 0..n-1 one group after another."""
        slices = []
        for path in paths:
            metadata = pq.ParquetFile(path).metadata
            seq_column = metadata.schema.to_arrow_schema().get_field_index("seq")
            for group in range(metadata.num_row_groups):
                row_group = metadata.row_group(group)
                if not row_group.num_rows:
                    continue
                stats = row_group.column(seq_column).statistics
                if stats is None or not stats.has_min_max or (
                        stats.max - stats.min + 1 != row_group.num_rows):  # fmt: skip
                    raise DedupIndexError(f"{path}: row group {group} does not hold consecutive "
                                          "seq numbers; rebuild the index")  # fmt: skip
                slices.append(PriorSlice(str(path), group, int(stats.min), row_group.num_rows))
        slices.sort(key=lambda s: s.start)
        expected = 0
        for piece in slices:
            if piece.start != expected:
                raise DedupIndexError(f"{data_dir}: index rows are not numbered 0..n-1 in order")
            expected += piece.rows
        return cls(str(data_dir), tuple(slices))


# Chunks per worker when the documents are too few to fill `chunk_documents`-sized chunks:
# tasks that end at different times still leave no worker idle for long.
CHUNKS_PER_WORKER = 2


@dataclass(frozen=True)
class DistributedDedupSettings:
    """How the distributed dedup is cut. `worker_memory_bytes`: the budget a partition is
    sized for (a worker's peak grows with it, not with the dataset); `chunk_documents`: whole
    files are grouped into chunks of at most about this many documents (one task each; fewer
    when that gives each worker `CHUNKS_PER_WORKER` chunks);
    `partitions`, `band_ranges`: fixed counts instead of the ones the budget gives (tests);
    `retries`: attempts after a worker dies or a task fails."""

    worker_memory_bytes: int = 2 * 2**30
    chunk_documents: int = 50_000
    partitions: int | None = None
    band_ranges: int | None = None
    retries: int = 2


@dataclass(frozen=True)
class DedupPlan:
    """The files, the prior index and the partition counts of one distributed dedup."""

    files: tuple[DocumentFile, ...]
    prior: PriorIndex | None
    config: MinHashConfig
    chunks: tuple[tuple[int, int], ...]  # [first file, end file) of each chunk
    partitions: int  # key, candidate-pair, edge and component partitions
    band_ranges: int  # hash ranges per band: bands x band_ranges band partitions
    remove: bool = True
    _file_starts: np.ndarray = field(default=None, repr=False, compare=False)

    @classmethod
    def make(cls, files: list[DocumentFile], config: MinHashConfig, prior: PriorIndex | None,
             settings: DistributedDedupSettings, workers: int = 1,
             remove: bool = True) -> DedupPlan:  # fmt: skip
        """Chunks of whole files, and partition counts such that a partition's rows fit the
        worker memory budget (at least one partition per worker, for parallelism)."""
        repeated = [name for name, n in Counter(f.source for f in files).items() if n > 1]
        if repeated:
            raise ValueError(f"input file {repeated[0]!r} is listed twice: each DocumentFile "
                             "must be one input file of the dedup order")  # fmt: skip
        # Signing a chunk is most of the work: enough chunks to keep every worker busy.
        documents = sum(f.documents for f in files)
        chunk_documents = min(settings.chunk_documents,
                              math.ceil(documents / (CHUNKS_PER_WORKER * workers)) or 1)  # fmt: skip
        chunks, start, size = [], 0, 0
        for index, item in enumerate(files):
            if size and size + item.documents > chunk_documents:
                chunks.append((start, index))
                start, size = index, 0
            size += item.documents
        if start < len(files) or not chunks:
            chunks.append((start, len(files)))
        total = sum(f.documents for f in files) + (prior.documents if prior else 0)
        budget = settings.worker_memory_bytes
        partitions = settings.partitions or max(
            workers, math.ceil(total * BYTES_PER_PARTITION_ROW / budget)
        )
        band_ranges = settings.band_ranges or max(1, math.ceil(total * BYTES_PER_BAND_ROW / budget))
        return cls(tuple(files), prior, config, tuple(chunks), partitions, band_ranges, remove)

    def __post_init__(self) -> None:
        counts = [f.documents for f in self.files]
        object.__setattr__(self, "_file_starts", self.offset + np.cumsum([0, *counts]))

    @property
    def offset(self) -> int:
        """Prior documents: the first node of this run."""
        return self.prior.documents if self.prior else 0

    @property
    def documents(self) -> int:
        return int(self._file_starts[-1]) - self.offset

    @property
    def prior_homes(self) -> int:
        return len(self.prior.slices) if self.prior else 0

    @property
    def homes(self) -> int:
        return self.prior_homes + len(self.chunks)

    def chunk_home(self, chunk: int) -> int:
        return self.prior_homes + chunk

    def chunk_files(self, chunk: int) -> tuple[DocumentFile, ...]:
        first, end = self.chunks[chunk]
        return self.files[first:end]

    def chunk_start(self, chunk: int) -> int:
        """The first node of a chunk."""
        return int(self._file_starts[self.chunks[chunk][0]])

    def home_starts(self) -> np.ndarray:
        """The first node of every home (prior row groups, then chunks), ascending."""
        prior = [s.start for s in self.prior.slices] if self.prior else []
        chunks = [self.chunk_start(c) for c in range(len(self.chunks))]
        return np.array(prior + chunks, np.int64)

    def home_of(self, nodes: np.ndarray) -> np.ndarray:
        """The home of each node."""
        starts = self.home_starts()
        return np.searchsorted(starts, nodes, side="right").astype(np.int64) - 1

    def file_ranks(self, nodes: np.ndarray) -> np.ndarray:
        """The input file rank of each node of this run (prior nodes: -1)."""
        ranks = np.searchsorted(self._file_starts, nodes, side="right") - 1
        return np.where(nodes < self.offset, -1, ranks).astype(np.intc)

    def key_partition(self, high_key: np.ndarray) -> np.ndarray:
        """Partition of a normalised-text key, by range of its first (uniform) 64 bits."""
        return _range_of(high_key, self.partitions)

    def band_partition(self, band: int, values: np.ndarray) -> np.ndarray:
        """Partition of band hashes: the band's own ranges, by hash value (uniform)."""
        return band * self.band_ranges + _range_of(values, self.band_ranges)

    def pair_partition(self, pairs: np.ndarray) -> np.ndarray:
        """Partition of node pairs, by a hash of both nodes (a pair found in several bands
        meets itself there)."""
        mixed = mix64(pairs[:, 0].astype(np.uint64)) ^ pairs[:, 1].astype(np.uint64)
        return (mix64(mixed) % np.uint64(self.partitions)).astype(np.int64)

    def node_partition(self, nodes: np.ndarray) -> np.ndarray:
        """Partition of a node in the connected-components stages."""
        return (mix64(nodes.astype(np.uint64)) % np.uint64(self.partitions)).astype(np.int64)


def _range_of(values: np.ndarray, count: int) -> np.ndarray:
    """Which of `count` equal ranges of the 64-bit space each uniform hash falls in."""
    high = (values.astype(np.uint64) >> np.uint64(32)).astype(np.uint64)
    return ((high * np.uint64(count)) >> np.uint64(32)).astype(np.int64)
