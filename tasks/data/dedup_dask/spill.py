"""The disk shuffle between distributed dedup stages: a task writes one Arrow file per
destination partition, the destination's task reads them all.

    <root>/<dataset>/<destination>/from-<source>.arrow

A file is written under a temporary name and renamed when complete, and its name depends only
on (dataset, destination, source): a task that is retried (its worker died) rewrites the same
files with the same rows, so nothing is lost or read twice. The root must be reachable by every
worker (a local directory for a LocalCluster; a shared filesystem for a real cluster).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyarrow import ipc


def write_table(path: Path, table: pa.Table) -> None:
    """`table` as one Arrow IPC file at `path`, renamed into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}-{id(table)}")
    with pa.OSFile(str(partial), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    partial.replace(path)


def read_table(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return ipc.open_file(source).read_all()


def scatter(root: Path, dataset: str, source: int, destinations: np.ndarray, table: pa.Table,
            count: int) -> None:  # fmt: skip
    """Write the rows of `table` to `count` partitions of `dataset`, row i to
    `destinations[i]`; an empty file for a partition that gets no row (so a reader can tell a
    finished source from a missing one)."""
    order = np.argsort(destinations, kind="stable")  # stable: rows keep their order per partition
    bounds = np.searchsorted(destinations[order], np.arange(count + 1))
    for destination in range(count):
        rows = order[bounds[destination] : bounds[destination + 1]]
        write_table(root / dataset / f"{destination:05d}" / f"from-{source:05d}.arrow",
                    table.take(pa.array(rows, pa.int64())))  # fmt: skip


def gather(root: Path, dataset: str, destination: int, schema: pa.Schema) -> pa.Table:
    """Every source's rows for `destination`, in source order."""
    folder = root / dataset / f"{destination:05d}"
    paths = sorted(folder.glob("from-*.arrow")) if folder.is_dir() else []
    tables = [read_table(path) for path in paths]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def column(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    """One column as a numpy array of `dtype` (an empty table gives an empty array)."""
    values = table.column(name).to_numpy() if table.num_rows else np.zeros(0, dtype)
    return values.astype(dtype, copy=False)
