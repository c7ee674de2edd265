"""Stage 2: node pairs, per partition, with `dedup`'s own pair functions.

- Exact pairs, per key range: all rows of a key meet in one partition, so each document pairs
  with the earliest prior row of its key and with every earlier first-in-file row of its key,
  as in one process. They go straight to the edge partitions.
- Candidate pairs, per (band, hash range): a whole band bucket meets in one partition, so the
  BUCKET_WINDOW pairs of each bucket (by node order) are the single-process ones. They go to
  pair partitions by a hash of the pair, where each pair found in several bands is kept once
  and its two nodes are asked for their shingle sets (`verify`).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
from lmforge.tasks.data.dedup import (
    _bucket_pairs,
    _prior_exact_pairs,
    _run_exact_pairs,
    _unique_pairs,
)
from lmforge.tasks.data.dedup_dask.plan import DedupPlan
from lmforge.tasks.data.dedup_dask.signatures import BAND_SCHEMA, KEY_SCHEMA
from lmforge.tasks.data.dedup_dask.spill import column, gather, read_table, scatter, write_table

PAIR_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])
NODE_SCHEMA = pa.schema([("node", pa.int64())])
# Sources of the edge partitions: exact-pair tasks, then verification tasks (`verify`).
EXACT_SOURCE = 0


def pair_table(pairs: np.ndarray) -> pa.Table:
    return pa.table({"a": pairs[:, 0], "b": pairs[:, 1]}, schema=PAIR_SCHEMA)


def pair_array(table: pa.Table) -> np.ndarray:
    return np.stack((column(table, "a", np.int64), column(table, "b", np.int64)), axis=1)


def send_edges(plan: DedupPlan, root: Path, source: int, pairs: np.ndarray) -> None:
    """Exact or verified pairs (earlier, later) to the edge partitions, by earlier node."""
    scatter(root, "edges", source, plan.node_partition(pairs[:, 0]), pair_table(pairs),
            plan.partitions)  # fmt: skip


def exact_pairs(plan: DedupPlan, partition: int, root: str) -> int:
    """Stage 2 for one key range; returns its exact pairs."""
    root = Path(root)
    rows = gather(root, "keys", partition, KEY_SCHEMA)
    nodes = column(rows, "node", np.int64)
    order = np.argsort(nodes, kind="stable")
    nodes = nodes[order]
    keys = np.stack((column(rows, "k0", np.uint64)[order], column(rows, "k1", np.uint64)[order]),
                    axis=1)  # fmt: skip
    first = column(rows, "first", bool)[order]
    in_run = nodes >= plan.offset
    run_nodes, prior_nodes = nodes[in_run], nodes[~in_run]
    run_keys = keys[in_run]
    # Local row numbers keep the node order, which is all the pair functions compare.
    prior = SimpleNamespace(keys=keys[~in_run])
    with_prior = _prior_exact_pairs(run_keys, prior, 0)
    in_run_pairs = _run_exact_pairs(run_keys, first[in_run], 0)
    pairs = np.concatenate((
        np.stack((prior_nodes[with_prior[:, 0]], run_nodes[with_prior[:, 1]]), axis=1),
        run_nodes[in_run_pairs],
    )).reshape(-1, 2)  # fmt: skip
    send_edges(plan, root, EXACT_SOURCE + partition, pairs)
    return len(pairs)


def candidate_pairs(plan: DedupPlan, partition: int, root: str) -> int:
    """Stage 2 for one (band, hash range); returns its pairs (repeats across bands included)."""
    root = Path(root)
    rows = gather(root, "bands", partition, BAND_SCHEMA)
    nodes = column(rows, "node", np.int64)
    order = np.argsort(nodes, kind="stable")
    pairs = _bucket_pairs(column(rows, "value", np.uint64)[order], nodes[order], plan.offset)
    pairs = pairs.reshape(-1, 2).astype(np.int64, copy=False)
    scatter(root, "candidates", partition, plan.pair_partition(pairs), pair_table(pairs),
            plan.partitions)  # fmt: skip
    return len(pairs)


def unique_candidates(plan: DedupPlan, partition: int, root: str) -> int:
    """Each candidate pair of a pair partition once (kept in `unique/` for verification); both
    nodes of every pair are sent to their home, which spills their shingle sets. Returns the
    partition's distinct pairs."""
    root = Path(root)
    pairs = _unique_pairs(pair_array(gather(root, "candidates", partition, PAIR_SCHEMA)))
    write_table(unique_path(root, partition), pair_table(pairs))
    nodes = np.unique(pairs)
    scatter(root, "needed", partition, plan.home_of(nodes),
            pa.table({"node": nodes}, schema=NODE_SCHEMA), plan.homes)  # fmt: skip
    return len(pairs)


def unique_path(root: Path, partition: int) -> Path:
    return root / "unique" / f"{partition:05d}.arrow"


def unique_pairs(root: Path, partition: int) -> np.ndarray:
    return pair_array(read_table(unique_path(root, partition)))
