"""Stage 3: each candidate pair's exact Jaccard similarity, where the shingles are.

Every home computes the shingle sets of its documents that are in some candidate pair
(`needed`: a chunk streams its files once more, a prior row group reads only the index rows'
parts) and spills them to `sets/`: one file of sets back to back and an index (node, start,
length). Each pair partition then checks its pairs against those files, reading one set at
a time, and sends the verified pairs to the edge partitions.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.tasks.data.dataset_writer import CandidateDocuments
from lmforge.tasks.data.dedup import PRIOR_SETS_PER_READ, jaccard, shingles
from lmforge.tasks.data.dedup_dask.pairs import NODE_SCHEMA, send_edges, unique_pairs
from lmforge.tasks.data.dedup_dask.plan import DedupPlan
from lmforge.tasks.data.dedup_dask.spill import column, gather, read_table, write_table
from lmforge.tasks.data.dedup_index import shingle_sets_at

# Set files a verify task keeps open (one per home it reads; the least recently read closed).
OPEN_SET_FILES = 64


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
    """The shingle sets of `nodes` (ascending), read back from their homes' files one at a
    time. Each home's index is read once and only `nodes`' rows of it kept, and at most
    `OPEN_SET_FILES` files are open: a task's memory follows its own pairs, not the number of
    homes (which grows with the dataset)."""

    def __init__(self, root: Path, plan: DedupPlan, nodes: np.ndarray):
        self.root = root
        self.nodes = nodes
        self.homes = plan.home_of(nodes)
        self.starts = np.zeros(len(nodes), np.int64)
        self.lengths = np.zeros(len(nodes), np.int64)
        bounds = np.flatnonzero(np.diff(self.homes)) + 1  # nodes ascend, so homes do
        for span in np.split(np.arange(len(nodes)), bounds):
            if len(span):
                self._locate(int(self.homes[span[0]]), span)
        self.files: OrderedDict[int, BinaryIO] = OrderedDict()

    def _locate(self, home: int, span: np.ndarray) -> None:
        index = read_table(sets_paths(self.root, home)[1])
        indexed = column(index, "node", np.int64)
        at = np.searchsorted(indexed, self.nodes[span])
        missing = (at == len(indexed)) | (indexed[np.minimum(at, len(indexed) - 1)]
                                          != self.nodes[span])  # fmt: skip
        if missing.any():
            node = int(self.nodes[span][missing][0])
            raise KeyError(f"no spilled shingle set for node {node} (home {home})")
        self.starts[span] = column(index, "start", np.int64)[at]
        self.lengths[span] = column(index, "length", np.int64)[at]

    def _file(self, home: int) -> BinaryIO:
        file = self.files.get(home)
        if file is None:
            if len(self.files) == OPEN_SET_FILES:
                self.files.popitem(last=False)[1].close()
            file = self.files[home] = open(sets_paths(self.root, home)[0], "rb")
        self.files.move_to_end(home)
        return file

    def get(self, node: int) -> np.ndarray:
        at = int(np.searchsorted(self.nodes, node))
        file = self._file(int(self.homes[at]))
        file.seek(int(self.starts[at]))
        return np.frombuffer(file.read(8 * int(self.lengths[at])), "<u8")

    def close(self) -> None:
        for file in self.files.values():
            file.close()


def verify_partition(plan: DedupPlan, partition: int, root: str) -> int:
    """Stage 3b for one pair partition; returns its verified pairs."""
    root = Path(root)
    pairs = unique_pairs(root, partition)  # sorted by earlier node: its set is read once
    verified = np.zeros(len(pairs), bool)
    sets = _SpilledSets(root, plan, np.unique(pairs))
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
