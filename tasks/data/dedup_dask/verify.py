"""Stage 3: each candidate pair's exact Jaccard similarity, where the shingles are.

Every home computes the shingle sets of its documents that are in some candidate pair
(`needed`: a chunk streams its files once more, a prior row group reads only the index rows'
parts) and spills them to `sets/`: one file of sets back to back and an index (node, start,
length). Each pair partition then checks its pairs against those files, reading one set at
a time, and sends the verified pairs to the edge partitions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.tasks.data.dataset_writer import CandidateDocuments
from lmforge.tasks.data.dedup import PRIOR_SETS_PER_READ, jaccard, shingles
from lmforge.tasks.data.dedup_dask.pairs import NODE_SCHEMA, send_edges, unique_pairs
from lmforge.tasks.data.dedup_dask.plan import DedupPlan
from lmforge.tasks.data.dedup_dask.spill import column, gather, read_table, write_table
from lmforge.tasks.data.dedup_index import shingle_sets_at


def sets_paths(root: Path, home: int) -> tuple[Path, Path]:
    """(shingle sets back to back, their index) of one home."""
    return root / "sets" / f"{home:05d}.bin", root / "sets" / f"{home:05d}.index.arrow"


class _SetWriter:
    """Appends shingle sets to a home's file; `close` renames it into place and writes the
    index last (an index names a complete file)."""

    def __init__(self, root: Path, home: int):
        self.path, self.index_path = sets_paths(root, home)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.file = open(self.partial, "wb")
        self.nodes: list[int] = []
        self.starts: list[int] = []
        self.lengths: list[int] = []
        self.at = 0

    def put(self, node: int, shingle_set: np.ndarray) -> None:
        data = np.ascontiguousarray(shingle_set, "<u8").tobytes()
        self.file.write(data)
        self.nodes.append(node)
        self.starts.append(self.at)
        self.lengths.append(len(shingle_set))
        self.at += len(data)

    def close(self) -> None:
        self.file.close()
        self.partial.replace(self.path)
        write_table(self.index_path, pa.table({
            "node": pa.array(self.nodes, pa.int64()), "start": pa.array(self.starts, pa.int64()),
            "length": pa.array(self.lengths, pa.int64()),
        }))  # fmt: skip


def spill_shingle_sets(plan: DedupPlan, home: int, root: str) -> int:
    """Stage 3a for one home; returns the sets spilled."""
    root = Path(root)
    needed = np.unique(column(gather(root, "needed", home, NODE_SCHEMA), "node", np.int64))
    writer = _SetWriter(root, home)
    try:
        if home < plan.prior_homes:
            _prior_sets(plan, home, needed, writer)
        else:
            _chunk_sets(plan, home - plan.prior_homes, needed, writer)
    finally:
        writer.close()
    return len(needed)


def _chunk_sets(plan: DedupPlan, chunk: int, needed: np.ndarray, writer: _SetWriter) -> None:
    if not len(needed):
        return
    files = plan.chunk_files(chunk)
    documents = CandidateDocuments.of_files([(f.path, f.source) for f in files], plan.config)
    wanted = (needed - plan.chunk_start(chunk)).tolist()
    at = 0
    for row, document in enumerate(documents):
        if row != wanted[at]:
            continue
        writer.put(int(needed[at]), shingles(document.text, document.lang, plan.config))
        at += 1
        if at == len(wanted):
            break


def _prior_sets(plan: DedupPlan, home: int, needed: np.ndarray, writer: _SetWriter) -> None:
    piece = plan.prior.slices[home]
    where = pq.ParquetFile(piece.path).read_row_group(piece.row_group,
                                                      columns=["seq", "lang", "part", "row"])  # fmt: skip
    where = where.sort_by("seq")  # row i of the group is node start + i
    local = needed - piece.start
    for start in range(0, len(needed), PRIOR_SETS_PER_READ):
        nodes = needed[start : start + PRIOR_SETS_PER_READ].tolist()
        rows = where.take(pa.array(local[start : start + PRIOR_SETS_PER_READ], pa.int64()))
        sets = shingle_sets_at(Path(plan.prior.data_dir), plan.config, nodes, rows.to_pylist())
        for node in nodes:
            writer.put(node, sets[node])


class _SpilledSets:
    """Shingle sets read back from the homes' files, one at a time."""

    def __init__(self, root: Path, plan: DedupPlan):
        self.root = root
        self.plan = plan
        self.indexes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.files: dict[int, object] = {}

    def get(self, node: int) -> np.ndarray:
        home = int(self.plan.home_of(np.array([node]))[0])
        if home not in self.indexes:
            path, index_path = sets_paths(self.root, home)
            index = read_table(index_path)
            self.indexes[home] = tuple(column(index, name, np.int64)
                                       for name in ("node", "start", "length"))  # fmt: skip
            self.files[home] = open(path, "rb")
        nodes, starts, lengths = self.indexes[home]
        at = int(np.searchsorted(nodes, node))
        if at == len(nodes) or nodes[at] != node:
            raise KeyError(f"no spilled shingle set for node {node} (home {home})")
        file = self.files[home]
        file.seek(int(starts[at]))
        return np.frombuffer(file.read(8 * int(lengths[at])), "<u8")

    def close(self) -> None:
        for file in self.files.values():
            file.close()


def verify_partition(plan: DedupPlan, partition: int, root: str) -> int:
    """Stage 3b for one pair partition; returns its verified pairs."""
    root = Path(root)
    pairs = unique_pairs(root, partition)  # sorted by earlier node: its set is read once
    verified = np.zeros(len(pairs), bool)
    sets = _SpilledSets(root, plan)
    try:
        earlier_node, earlier = -1, None
        for at, (a, b) in enumerate(pairs.tolist()):
            if a != earlier_node:
                earlier_node, earlier = a, sets.get(a)
            verified[at] = jaccard(earlier, sets.get(b)) >= plan.config.threshold
    finally:
        sets.close()
    send_edges(plan, root, plan.partitions + partition, pairs[verified])
    return int(np.count_nonzero(verified))
