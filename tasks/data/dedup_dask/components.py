"""Stage 4: connected components of the exact and verified pairs, without gathering the pairs
on one process: alternating Large-Star and Small-Star steps (Kiveris et al., "Connected
Components in MapReduce and Beyond", SoCC 2014) over edge records partitioned by node.

Each step reads a partition's records (u, v) - both directions of every edge, by u - and
writes a new edge set; components are kept, and they become stars around their smallest node
in O(log^2 n) steps. The loop stops when the edge set (count and an order-free hash) stays the
same through a Large-Star and a Small-Star step. Every exact or verified pair is then labelled
with its component (the star's centre), both of its ends checked to agree, and sent to the
component partitions, where `survivors` applies the single-process rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from lmforge.tasks.data.dedup import _unique_pairs
from lmforge.tasks.data.dedup_dask.pairs import PAIR_SCHEMA, pair_array, pair_table
from lmforge.tasks.data.dedup_dask.plan import DedupPlan
from lmforge.tasks.data.dedup_dask.spill import column, gather, scatter
from lmforge.tasks.data.filters.text_units import mix64

LABELLED_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("label", pa.int64())])


def step_dataset(step: int) -> str:
    return f"cc-{step:03d}"


def _send_records(plan: DedupPlan, root: Path, dataset: str, source: int,
                  edges: np.ndarray) -> None:  # fmt: skip
    """Both directions of each edge, to the partition of their first node."""
    records = np.concatenate((edges, edges[:, ::-1])).reshape(-1, 2)
    scatter(root, dataset, source, plan.node_partition(records[:, 0]), pair_table(records),
            plan.partitions)  # fmt: skip


def _records(root: Path, dataset: str, partition: int) -> np.ndarray:
    """A partition's distinct records, sorted by (u, v)."""
    return _unique_pairs(pair_array(gather(root, dataset, partition, PAIR_SCHEMA)))


def symmetrize(plan: DedupPlan, partition: int, root: str) -> int:
    """Step 0's input: each exact or verified pair of this edge partition in both directions."""
    root = Path(root)
    edges = pair_array(gather(root, "edges", partition, PAIR_SCHEMA))
    _send_records(plan, root, step_dataset(0), partition, edges)
    return len(edges)


def star_step(plan: DedupPlan, partition: int, root: str, step: int) -> tuple[int, int]:
    """Large-Star (even steps) or Small-Star (odd) over one partition of step `step`'s
    records, writing step `step + 1`'s. Returns (records, order-free hash) of the input."""
    root = Path(root)
    records = _records(root, step_dataset(step), partition)
    u, v = records[:, 0], records[:, 1]
    digest = int(np.sum(mix64(mix64(u.astype(np.uint64)) ^ v.astype(np.uint64)), dtype=np.uint64))
    if step % 2 == 0:
        edges = _large_star(u, v)
    else:
        edges = _small_star(u, v)
    _send_records(plan, root, step_dataset(step + 1), partition, edges)
    return len(records), digest


def _group_min(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """For each record, the smallest v among the records of its u (records sorted by u)."""
    if not len(u):
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], u[1:] != u[:-1])))
    minima = np.minimum.reduceat(v, starts)
    return np.repeat(minima, np.diff(np.append(starts, len(u))))


def _large_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Each larger neighbour v of u is linked to m(u), the smallest of u and its neighbours."""
    smallest = np.minimum(u, _group_min(u, v))
    larger = v > u
    return np.stack((v[larger], smallest[larger]), axis=1)


def _small_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u and each smaller neighbour are linked to m, the smallest of u's smaller neighbours."""
    smaller = v < u
    u, v = u[smaller], v[smaller]
    smallest = _group_min(u, v)
    others = v != smallest
    starts = np.flatnonzero(np.concatenate(([True], u[1:] != u[:-1]))) if len(u) else u[:0]
    return np.concatenate((np.stack((v[others], smallest[others]), axis=1),
                           np.stack((u[starts], smallest[starts]), axis=1)))  # fmt: skip


def _labels(root: Path, step: int, partition: int) -> tuple[np.ndarray, np.ndarray]:
    """(nodes ascending, their component) from the converged stars: a star's centre."""
    records = _records(root, step_dataset(step), partition)
    u, v = records[:, 0], records[:, 1]
    if not len(u):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], u[1:] != u[:-1])))
    return u[starts], np.minimum(u[starts], np.minimum.reduceat(v, starts))


def _label_of(nodes: np.ndarray, labels: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    at = np.searchsorted(nodes, wanted)
    found = (at < len(nodes)) & (nodes[np.minimum(at, len(nodes) - 1)] == wanted)
    if not found.all():
        raise RuntimeError(f"node {int(wanted[~found][0])} has no component: the "
                           "connected-components stage lost an edge")  # fmt: skip
    return labels[at]


def label_earlier(plan: DedupPlan, partition: int, root: str, step: int) -> None:
    """Each pair of this edge partition with its earlier node's component, sent on to the
    later node's partition."""
    root = Path(root)
    nodes, labels = _labels(root, step, partition)
    edges = pair_array(gather(root, "edges", partition, PAIR_SCHEMA))
    label = _label_of(nodes, labels, edges[:, 0]) if len(edges) else np.zeros(0, np.int64)
    table = pa.table({"a": edges[:, 0], "b": edges[:, 1], "label": label}, schema=LABELLED_SCHEMA)
    scatter(root, "labelled", partition, plan.node_partition(edges[:, 1]), table,
            plan.partitions)  # fmt: skip


def label_later(plan: DedupPlan, partition: int, root: str, step: int) -> None:
    """Checks the later node's component is the earlier one's; sends each pair to its
    component's partition. Raises RuntimeError when they differ (the stars did not converge)."""
    root = Path(root)
    nodes, labels = _labels(root, step, partition)
    table = gather(root, "labelled", partition, LABELLED_SCHEMA)
    edges = pair_array(table)
    label = column(table, "label", np.int64)
    if len(edges) and not np.array_equal(_label_of(nodes, labels, edges[:, 1]), label):
        raise RuntimeError("the two ends of a pair ended in different components: the "
                           "connected-components steps did not converge")  # fmt: skip
    scatter(root, "components", partition, plan.node_partition(label), pair_table(edges),
            plan.partitions)  # fmt: skip
