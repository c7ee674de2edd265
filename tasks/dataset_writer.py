"""Steps 2 and 3 of the data stage, once over all files: find duplicates among the staged
candidates, then write the final `docs/` and `removed/` parts and the manifest, after checking
that kept + removed == responses."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from lmforge.tasks.data_config import DataConfig
from lmforge.tasks.dedup import DedupDocument, DuplicateReport
from lmforge.tasks.dedup import find_duplicates as find_duplicate_documents
from lmforge.tasks.warc_processing import DOC_SCHEMA, REMOVED_SCHEMA, FileResult

from lmforge.manifest import describe_input, read_manifest, stage_output

STAGE_NAME = "data_refresh"


class AccountingError(RuntimeError):
    """Kept plus removed documents do not add up to the responses read: something vanished."""


class _CandidateDocuments:
    """The candidates of all files as DedupDocuments, re-readable (dedup iterates twice)."""

    def __init__(self, file_results: Sequence[FileResult]):
        self.paths = [r.candidates_path for r in _in_order(file_results)]

    def __iter__(self) -> Iterator[DedupDocument]:
        for path in self.paths:
            for batch in pq.ParquetFile(path).iter_batches(columns=["id", "text", "lang"]):
                for row in batch.to_pylist():
                    yield DedupDocument(row["id"], row["text"], row["lang"])


def _in_order(file_results: Sequence[FileResult]) -> list[FileResult]:
    # Mapped tasks may finish in any order; the dataset must not depend on it.
    return sorted(file_results, key=lambda r: r.warc_file)


def find_duplicates(file_results: Sequence[FileResult], config: DataConfig) -> DuplicateReport:
    """Exact and near duplicates among the candidates of all files (see `lmforge.tasks.dedup`)."""
    return find_duplicate_documents(_CandidateDocuments(file_results), config.minhash)


class _PartWriter:
    """Writes `part-00000.parquet`, `part-00001.parquet`, ... of at most `rows_per_part` rows;
    at least one part, so an empty result is still a readable, typed dataset."""

    def __init__(self, directory: Path, schema: pa.Schema, rows_per_part: int):
        self.directory = directory
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.parts = 0
        self.rows_in_part = 0
        self.writer: pq.ParquetWriter | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            if self.writer is None or self.rows_in_part >= self.rows_per_part:
                self._next_part()
            take = min(self.rows_per_part - self.rows_in_part, table.num_rows - offset)
            self.writer.write_table(table.slice(offset, take))
            self.rows_in_part += take
            offset += take

    def _next_part(self) -> None:
        if self.writer is not None:
            self.writer.close()
        path = self.directory / f"part-{self.parts:05d}.parquet"
        self.writer = pq.ParquetWriter(path, self.schema)
        self.parts += 1
        self.rows_in_part = 0

    def close(self) -> None:
        if self.writer is None:
            self._next_part()
        self.writer.close()


def write_dataset(
    file_results: Sequence[FileResult],
    duplicates: DuplicateReport,
    out_dir: str | os.PathLike[str],
    config: DataConfig,
    inputs: Sequence[str | os.PathLike[str] | dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write `out_dir/docs/part-*.parquet`, `out_dir/removed/part-*.parquet` and the manifest
    atomically (via `stage_output`); return the manifest.

    `inputs` describe the WARC files in the manifest (default: the files of `file_results`,
    using the digests computed while processing them). Raises AccountingError, leaving
    `out_dir` untouched, if kept + removed differs from the responses read or a duplicate
    names a document that is not among the candidates.
    """
    results = _in_order(file_results)
    described = _describe_inputs(results, inputs)
    duplicate_by_id = duplicates.by_id()
    removed_by_stage: dict[str, Counter[str]] = {}
    languages: Counter[str] = Counter()
    kept = removed = bytes_out = 0
    seen_duplicates = 0
    with stage_output(out_dir, STAGE_NAME, config.to_dict(), described) as writer:
        docs = _PartWriter(writer.path / "docs", DOC_SCHEMA, config.docs_per_part)
        removed_parts = _PartWriter(writer.path / "removed", REMOVED_SCHEMA, config.docs_per_part)
        for result in results:
            for batch in pq.ParquetFile(result.candidates_path).iter_batches():
                table = pa.Table.from_batches([batch], DOC_SCHEMA)
                ids = table.column("id").to_pylist()
                is_duplicate = pa.array([doc_id in duplicate_by_id for doc_id in ids])
                keep = table.filter(pc.invert(is_duplicate))
                docs.write(keep)
                kept += keep.num_rows
                languages.update(keep.column("lang").to_pylist())
                bytes_out += sum(
                    len(text.encode("utf-8")) for text in keep.column("text").to_pylist()
                )
                dropped = table.filter(is_duplicate).select(
                    ["id", "url", "warc_file", "lang", "warc_offset"]
                )
                rows = []
                for row in dropped.to_pylist():
                    duplicate = duplicate_by_id[row["id"]]
                    removed_by_stage.setdefault("dedup", Counter())[duplicate.reason] += 1
                    rows.append({**row, "stage": "dedup", "reason": duplicate.reason,
                                 "duplicate_of": duplicate.duplicate_of})  # fmt: skip
                seen_duplicates += len(rows)
                removed += len(rows)
                removed_parts.write(pa.Table.from_pylist(rows, REMOVED_SCHEMA))
            for batch in pq.ParquetFile(result.removed_path).iter_batches():
                table = pa.Table.from_batches([batch], REMOVED_SCHEMA)
                for stage, reason in zip(
                    table.column("stage").to_pylist(),
                    table.column("reason").to_pylist(),
                    strict=True,
                ):
                    removed_by_stage.setdefault(stage, Counter())[reason] += 1
                removed += table.num_rows
                removed_parts.write(table)
        docs.close()
        removed_parts.close()

        responses = sum(r.stats["responses"] for r in results)
        if seen_duplicates != len(duplicate_by_id):
            raise AccountingError(
                f"{len(duplicate_by_id) - seen_duplicates} duplicates name documents that are "
                "not among the candidates: the duplicate report is from another run"
            )
        if kept + removed != responses:
            raise AccountingError(
                f"kept ({kept}) + removed ({removed}) != responses ({responses}): "
                f"{responses - kept - removed} documents vanished or were counted twice"
            )
        read_errors = [
            {"warc_file": r.warc_file, **error} for r in results for error in r.stats["read_errors"]
        ]
        writer.counts = {
            "warc_files": len(results),
            "responses": responses,
            "kept": kept,
            "removed": removed,
            "removed_by_stage": {s: sum(c.values()) for s, c in sorted(removed_by_stage.items())},
            "removed_by_reason": {
                s: dict(sorted(c.items())) for s, c in sorted(removed_by_stage.items())
            },
            "read_errors": len(read_errors),
            "languages": dict(languages.most_common()),
            "bytes_in": sum(r.stats["payload_bytes"] for r in results),
            "bytes_out": bytes_out,
            "dedup": duplicates.stats,
        }
        writer.extra["read_errors"] = read_errors
    return read_manifest(out_dir)


def _describe_inputs(
    results: Sequence[FileResult],
    inputs: Sequence[str | os.PathLike[str] | dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    by_path = {r.warc_path: r for r in results}
    items = inputs if inputs is not None else [r.warc_path for r in results]
    described = []
    for item in items:
        if isinstance(item, dict):
            described.append(item)
            continue
        path = Path(item).resolve()
        result = by_path.get(str(path))
        if result is None:
            described.append(describe_input(path))
        else:
            described.append(
                {"path": str(path), "bytes": path.stat().st_size, "sha256": result.sha256}
            )
    return described
