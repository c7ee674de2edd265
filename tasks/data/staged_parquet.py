"""Parquet files written in row batches under a temporary name and renamed when complete."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class StagedParquet:
    """A Parquet file written in row batches under a temporary name and renamed when complete:
    a retried or crashed task never leaves a half-written file under the final name."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 2048):
        self.path = path
        self.schema = schema
        self.batch_rows = batch_rows
        self.rows = 0
        self._pending: list[dict[str, Any]] = []
        self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> StagedParquet:
        self._writer = pq.ParquetWriter(self._tmp, self.schema)
        return self

    def append(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        self.rows += 1
        if len(self._pending) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_pylist(self._pending, self.schema))
            self._pending = []

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            self._writer.close()
        if exc_type is None:
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)
