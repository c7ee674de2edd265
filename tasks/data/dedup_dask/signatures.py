"""Stage 1, one task per home: normalised-text keys and LSH band hashes, sent to the key and
band partitions.

A chunk runs `dedup`'s own first pass over its whole files, so which documents are the first
with their text in their file (the only ones MinHashed) and their band hashes are exactly the
single-process ones. Its rows (id, key, flags, band hashes) stay in `rows/` for the later
stages and the report. A prior row group sends its index rows as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.tasks.data.dataset_writer import CandidateDocuments
from lmforge.tasks.data.dedup import (
    FIRST_IN_FILE,
    HAS_BANDS,
    KEY_BYTES,
    MinHasher,
    _first_pass,
)
from lmforge.tasks.data.dedup_dask.plan import DedupPlan
from lmforge.tasks.data.dedup_dask.spill import column, read_table, scatter, write_table
from lmforge.tasks.data.dedup_index import _fixed_binary

KEY_SCHEMA = pa.schema([("node", pa.int64()), ("k0", pa.uint64()), ("k1", pa.uint64()),
                        ("first", pa.bool_())])  # fmt: skip
BAND_SCHEMA = pa.schema([("node", pa.int64()), ("value", pa.uint64())])


def rows_path(root: Path, chunk: int) -> Path:
    return root / "rows" / f"{chunk:05d}.arrow"


def sign_chunk(plan: DedupPlan, chunk: int, root: str) -> int:
    """Stage 1 for one chunk; returns its documents. Raises ValueError when a file holds
    another number of documents than its `DocumentFile` says (it changed since)."""
    root = Path(root)
    files = plan.chunk_files(chunk)
    documents = CandidateDocuments.of_files([(f.path, f.source) for f in files], plan.config)
    run = _first_pass(documents, plan.config, MinHasher(plan.config))
    n, expected = len(run.ids), sum(f.documents for f in files)
    if n != expected:
        raise ValueError(f"chunk {chunk} ({files[0].path} ...) holds {n} documents, "
                         f"{expected} expected: a candidates file changed during the refresh")  # fmt: skip
    keys = np.frombuffer(run.keys, "<u8").reshape(n, 2)
    flags = np.frombuffer(run.flags, np.uint8)
    has_bands = (flags & HAS_BANDS) != 0
    bands = np.zeros((n, plan.config.bands), np.uint64)
    run.bands.move_to(np.ones(run.bands.count, bool), bands, np.flatnonzero(has_bands))
    columns = {"id": pa.array(run.ids.select(np.ones(n, bool)), pa.string()),
               "k0": keys[:, 0], "k1": keys[:, 1], "flags": flags}  # fmt: skip
    columns.update({f"band{b}": bands[:, b] for b in range(plan.config.bands)})
    write_table(rows_path(root, chunk), pa.table(columns))
    if plan.remove:
        nodes = plan.chunk_start(chunk) + np.arange(n, dtype=np.int64)
        first = (flags & FIRST_IN_FILE) != 0
        _send(plan, root, plan.chunk_home(chunk), nodes, keys, first, bands, has_bands)
    return n


def sign_prior(plan: DedupPlan, home: int, root: str) -> int:
    """Stage 1 for one prior index row group; returns its rows."""
    piece = plan.prior.slices[home]
    table = pq.ParquetFile(piece.path).read_row_group(
        piece.row_group, columns=["seq", "key", "bands", "has_bands"]
    )
    nodes = column(table, "seq", np.int64)
    keys = _fixed_binary(table.column("key"), KEY_BYTES)
    bands = _fixed_binary(table.column("bands"), 8 * plan.config.bands)
    has_bands = column(table, "has_bands", bool)
    _send(plan, Path(root), home, nodes, keys, np.zeros(len(nodes), bool), bands, has_bands)
    return len(nodes)


def _send(plan: DedupPlan, root: Path, home: int, nodes: np.ndarray, keys: np.ndarray,
          first: np.ndarray, bands: np.ndarray, has_bands: np.ndarray) -> None:  # fmt: skip
    """Key rows to the key partitions; band rows (documents with shingles) to the band
    partitions."""
    key_rows = pa.table({"node": nodes, "k0": keys[:, 0], "k1": keys[:, 1], "first": first},
                        schema=KEY_SCHEMA)  # fmt: skip
    scatter(root, "keys", home, plan.key_partition(keys[:, 0]), key_rows, plan.partitions)
    signed = np.flatnonzero(has_bands)
    count = plan.config.bands
    band_nodes = np.tile(nodes[signed], count)
    values = bands[signed].T.reshape(-1)  # band 0's rows, then band 1's, ...
    which_band = np.repeat(np.arange(count), len(signed))
    destinations = which_band * plan.band_ranges + plan.band_partition(0, values)
    band_rows = pa.table({"node": band_nodes, "value": values}, schema=BAND_SCHEMA)
    scatter(root, "bands", home, destinations, band_rows, count * plan.band_ranges)


def chunk_rows(root: Path, chunk: int) -> pa.Table:
    """The rows stage 1 kept for a chunk: id, k0, k1, flags, band0 ..."""
    return read_table(rows_path(root, chunk))
