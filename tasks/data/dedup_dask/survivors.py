"""Stage 5: the survivor rule, per component partition, with `dedup._survivors` itself.

The single-process rule goes file by file: a file's documents are joined with the documents
kept before it through their exact and verified pairs, and each loses to its cluster's
earliest node. Whether an earlier document is still kept depends only on pairs in its own
connected component, so running the rule on each component's pairs alone (files in the same
order) gives exactly the single-process survivors; a partition holds whole components, its
nodes renumbered in order (the rule only compares node order).

The removed documents' survivors are then resolved to ids and keys where they live (a chunk's
rows or a prior row group) and sent back to the removed document's chunk, which decides
`exact_duplicate` (same normalised-text key as its survivor) or `near_duplicate`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.tasks.data.dedup import EXACT_DUPLICATE, KEY_BYTES, NEAR_DUPLICATE, _survivors
from lmforge.tasks.data.dedup_dask.pairs import PAIR_SCHEMA, pair_array, pair_table
from lmforge.tasks.data.dedup_dask.plan import DedupPlan
from lmforge.tasks.data.dedup_dask.signatures import chunk_rows
from lmforge.tasks.data.dedup_dask.spill import column, gather, read_table, scatter, write_table
from lmforge.tasks.data.dedup_index import _fixed_binary

DECISION_SCHEMA = pa.schema([("node", pa.int64()), ("duplicate_of", pa.string()),
                             ("k0", pa.uint64()), ("k1", pa.uint64())])  # fmt: skip
REMOVED_SCHEMA = pa.schema([("node", pa.int64()), ("duplicate_of", pa.string()),
                            ("reason", pa.string())])  # fmt: skip


def survivors_partition(plan: DedupPlan, partition: int, root: str) -> dict[str, int]:
    """Stage 5a for one component partition: (removed node, survivor node) requests to the
    survivors' homes. Returns its removed documents, clusters and largest cluster."""
    root = Path(root)
    edges = pair_array(gather(root, "components", partition, PAIR_SCHEMA))
    nodes = np.unique(edges)
    first_run = int(np.searchsorted(nodes, plan.offset))  # nodes below are prior rows
    ranks = plan.file_ranks(nodes[first_run:])
    survivor = _survivors(np.searchsorted(nodes, edges).astype(np.int64), ranks, first_run)
    removed = np.flatnonzero(survivor >= 0)
    requests = np.stack((nodes[first_run + removed], nodes[survivor[removed]]), axis=1)
    scatter(root, "requests", partition, plan.home_of(requests[:, 1]), pair_table(requests),
            plan.homes)  # fmt: skip
    _, sizes = np.unique(requests[:, 1], return_counts=True)
    return {"removed": len(requests), "clusters": len(sizes),
            "largest_cluster": int(sizes.max()) + 1 if len(sizes) else 0}  # fmt: skip


def resolve_survivors(plan: DedupPlan, home: int, root: str) -> None:
    """Stage 5b for one home: the id and key of each survivor asked for, sent to the removed
    document's chunk."""
    root = Path(root)
    requests = pair_array(gather(root, "requests", home, PAIR_SCHEMA))
    if home < plan.prior_homes:
        piece = plan.prior.slices[home]
        rows = pq.ParquetFile(piece.path).read_row_group(piece.row_group,
                                                         columns=["seq", "id", "key"])  # fmt: skip
        rows = rows.sort_by("seq")
        keys = _fixed_binary(rows.column("key"), KEY_BYTES)
        start = piece.start
    else:
        chunk = home - plan.prior_homes
        rows = chunk_rows(root, chunk)
        keys = np.stack((column(rows, "k0", np.uint64), column(rows, "k1", np.uint64)), axis=1)
        start = plan.chunk_start(chunk)
    at = requests[:, 1] - start
    table = pa.table({
        "node": requests[:, 0],
        "duplicate_of": rows.column("id").take(pa.array(at, pa.int64())),
        "k0": keys[at, 0], "k1": keys[at, 1],
    }, schema=DECISION_SCHEMA)  # fmt: skip
    scatter(root, "decisions", home, plan.home_of(requests[:, 0]), table, plan.homes)


def removed_path(root: Path, chunk: int) -> Path:
    return root / "removed" / f"{chunk:05d}.arrow"


def decide_chunk(plan: DedupPlan, chunk: int, root: str) -> tuple[int, int]:
    """Stage 5c for one chunk: its removed documents (node, duplicate_of id, reason) in
    `removed/`, by node. Returns (exact, near) duplicates."""
    root = Path(root)
    decisions = gather(root, "decisions", plan.chunk_home(chunk), DECISION_SCHEMA)
    decisions = decisions.sort_by("node")
    rows = chunk_rows(root, chunk)
    at = column(decisions, "node", np.int64) - plan.chunk_start(chunk)
    same_text = ((column(rows, "k0", np.uint64)[at] == column(decisions, "k0", np.uint64))
                 & (column(rows, "k1", np.uint64)[at] == column(decisions, "k1", np.uint64)))  # fmt: skip
    reasons = np.where(same_text, EXACT_DUPLICATE, NEAR_DUPLICATE)
    write_table(removed_path(root, chunk), pa.table({
        "node": decisions.column("node"), "duplicate_of": decisions.column("duplicate_of"),
        "reason": pa.array(reasons.tolist(), pa.string()),
    }, schema=REMOVED_SCHEMA))  # fmt: skip
    exact = int(np.count_nonzero(same_text))
    return exact, len(at) - exact


def chunk_removed(root: Path, chunk: int) -> pa.Table:
    path = removed_path(root, chunk)
    return read_table(path) if path.exists() else REMOVED_SCHEMA.empty_table()
