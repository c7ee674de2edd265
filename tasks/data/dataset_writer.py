"""The writing half of steps 2 and 3 of the data stage (`refresh.DatasetRefresh` runs them):
the staged candidates as dedup documents, and one dataset version - `docs/lang=xx/` and
`removed/` parts, the version's dedup index rows and ledger - checked so that kept + removed ==
responses.

A refresh into a directory that holds a dataset built with the same `DataConfig` adds a
version (see `lmforge.tasks.data.dataset_versions` for the layout): input files whose sha256 is in
the ledger are skipped, new documents are deduplicated against every document kept before, and
old files are never rewritten. A directory holding a dataset built with other settings (or
before datasets had versions) is replaced by a new version 1, as every refresh used to do; a
directory holding anything else, or an input file, is refused (`claim_output_dir`).
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from lmforge.errors import LmforgeError
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.stats import merge_file_stats
from lmforge.tasks.data.dataset_versions import (
    DOCS_DIR,
    INDEX_DIR,
    LANGUAGE_KEY,
    LEDGER_DIR,
    REMOVED_DIR,
    add_counts,
    has_dataset,
    language_directory,
    write_ledger,
)
from lmforge.tasks.data.dedup import DedupDocument, DuplicateReport, KeptSignatures, MinHashConfig
from lmforge.tasks.data.dedup_index import (
    INDEX_FORMAT,
    index_files,
    index_is_usable,
    index_table,
    rebuild_index,
)
from lmforge.tasks.data.warc_processing import DOC_SCHEMA, REMOVED_SCHEMA, FileResult

from lmforge.manifest import describe_input, read_manifest, version_name

log = logging.getLogger(__name__)

STAGE_NAME = "data_refresh"
# Kept documents are stored without `lang`: the partition directory says it.
PARTITIONED_DOC_SCHEMA = DOC_SCHEMA.remove(DOC_SCHEMA.get_field_index(LANGUAGE_KEY))


# The dataset-level part of the quality classifier step (its top-fraction selection) counts
# under the step's own name.
SELECTION_STAGE = "quality_classifier"


class AccountingError(LmforgeError, RuntimeError):
    """Kept plus removed documents do not add up to the responses read: something vanished."""


class CandidateDocuments:
    """The candidates of all files as DedupDocuments, re-readable (dedup iterates twice)."""

    def __init__(self, file_results: Sequence[FileResult], config: MinHashConfig):
        self.files = [(r.candidates_path, r.warc_file) for r in in_order(file_results)]
        self.config = config

    @classmethod
    def of_files(cls, files: Sequence[tuple[str, str]], config: MinHashConfig) -> CandidateDocuments:
        """The candidates of (candidates path, input file name) pairs, in the order given."""
        documents = cls([], config)
        documents.files = list(files)
        return documents

    def __iter__(self) -> Iterator[DedupDocument]:
        columns = ["id", "text", "lang", "declared_lang"]
        for path, warc_file in self.files:
            # Small batches: dedup streams, it must not hold a file's text at once.
            batch_rows = pq.ParquetFile(path).iter_batches(batch_size=512, columns=columns)
            for batch in batch_rows:
                for row in batch.to_pylist():
                    lang = self.config.shingle_language_of(row["lang"], row["declared_lang"])
                    yield DedupDocument(row["id"], row["text"], lang, warc_file)


def in_order(file_results: Sequence[FileResult]) -> list[FileResult]:
    # Mapped tasks may finish in any order; the dataset must not depend on it.
    return sorted(file_results, key=lambda r: r.warc_file)


def continues_dataset(data_dir: str | os.PathLike[str] | None, config: DataConfig) -> bool:
    """Whether a refresh into `data_dir` adds a version to the dataset there: it holds a
    versioned `data_refresh` output built with the same settings."""
    if data_dir is None or not has_dataset(data_dir):
        return False
    manifest = read_manifest(data_dir)
    if manifest.get("stage") != STAGE_NAME or "version" not in manifest:
        return False
    try:
        return DataConfig.from_dict(manifest["params"]) == config
    except (TypeError, ValueError):
        return False


def has_top_fraction_selection(config: DataConfig) -> bool:
    """Whether the quality classifier's `keep_top_fraction` selects over the whole version
    (a per-language ranking of every non-duplicate)."""
    step = config.quality_classifier
    return step is not None and bool(step.keep_top_fraction)


def top_fraction_drops(
    results: Sequence[FileResult], duplicates: DuplicateReport, config: DataConfig
) -> dict[str, str]:
    """The documents the quality classifier's `keep_top_fraction` leaves out of this version:
    per language, the non-duplicates below the best-scored share (ties broken by id, so the
    choice does not depend on file order), as {id: "below_top_fraction"}."""
    if not has_top_fraction_selection(config):
        return {}
    step = config.quality_classifier
    duplicate_by_id = duplicates.by_id()
    by_language: dict[str, list[tuple[float, str]]] = {}
    for result in results:
        table = pq.read_table(result.candidates_path, columns=["id", "lang", "quality_score"])
        for doc_id, lang, score in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            if doc_id not in duplicate_by_id:
                by_language.setdefault(lang, []).append((-(score or 0.0), doc_id))
    dropped = {}
    for lang, scored in by_language.items():
        keep = math.ceil(step.top_fraction_for(lang) * len(scored) - 1e-9)
        dropped.update((doc_id, "below_top_fraction") for _, doc_id in sorted(scored)[keep:])
    return dropped


class _PartWriter:
    """Writes `<prefix>00000.parquet`, `<prefix>00001.parquet`, ... of at most `rows_per_part`
    rows, created on the first row (`close(always=True)` writes an empty, typed part if none).

    `start`: the number of the first row written here among all the rows of the series (a
    writer for a slice of the rows: the distributed writer gives each chunk its slice).
    `place(path, part)`: where a part's rows are written instead of its name `path` (a piece
    of a part shared with other writers); with it, each file is written under `scratch` and
    renamed into place when complete. The spots returned always name the part itself."""

    def __init__(self, directory: Path, prefix: str, schema: pa.Schema, rows_per_part: int,
                 start: int = 0, place: Callable[[Path, int], Path] | None = None,
                 scratch: Path | None = None):  # fmt: skip
        self.directory = directory
        self.prefix = prefix
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.row = start  # the next row's number in the series
        self.place = place
        self.scratch = scratch
        self.part = -1
        self.path: Path | None = None
        self.writer: pq.ParquetWriter | None = None
        self._written: tuple[Path, Path] | None = None  # (file being written, its final place)

    def write(self, table: pa.Table) -> list[tuple[Path, int]]:
        """Write the rows; returns (part path, row in part) for each."""
        spots = []
        offset = 0
        while offset < table.num_rows:
            part, row_in_part = divmod(self.row, self.rows_per_part)
            if self.writer is None or part != self.part:
                self._open(part)
            take = min(self.rows_per_part - row_in_part, table.num_rows - offset)
            self.writer.write_table(table.slice(offset, take))
            spots.extend((self.path, row_in_part + i) for i in range(take))
            self.row += take
            offset += take
        return spots

    def _open(self, part: int) -> None:
        self._close_part()
        self.part = part
        self.path = self.directory / f"{self.prefix}{part:05d}.parquet"
        target = self.place(self.path, part) if self.place is not None else self.path
        if self.scratch is not None:
            self._written = (self.scratch / f"{uuid.uuid4().hex}.parquet", target)
        else:
            self._written = (target, target)
        for path in self._written:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(self._written[0], self.schema)

    def _close_part(self) -> None:
        if self.writer is not None:
            self.writer.close()
            written, target = self._written
            if written != target:
                written.replace(target)
            self.writer = None

    def close(self, always: bool = False) -> None:
        if self.part < 0 and always:
            self._open(self.row // self.rows_per_part)
        self._close_part()


class _DocumentParts:
    """Kept documents into `docs/lang=xx/part-vNNNNN-MMMMM.parquet`, one writer per language
    (`starts`, `place`, `scratch`: each language's first row number and where parts go, as
    `_PartWriter` takes them)."""

    def __init__(self, root: Path, version: int, rows_per_part: int,
                 starts: Mapping[str, int] | None = None,
                 place: Callable[[Path, int], Path] | None = None,
                 scratch: Path | None = None):  # fmt: skip
        self.root = root
        self.prefix = f"part-{version_name(version)}-"
        self.rows_per_part = rows_per_part
        self.starts = starts or {}
        self.place, self.scratch = place, scratch
        self.writers: dict[str, _PartWriter] = {}

    def _writer(self, directory: str) -> _PartWriter:
        if directory not in self.writers:
            self.writers[directory] = _PartWriter(
                self.root / DOCS_DIR / directory, self.prefix, PARTITIONED_DOC_SCHEMA,
                self.rows_per_part, self.starts.get(directory, 0), self.place, self.scratch,
            )
        return self.writers[directory]

    def write(self, table: pa.Table) -> list[tuple[Path, int]]:
        """Write rows (with their `lang` column); returns (part path, row) per row, in order."""
        langs = table.column(LANGUAGE_KEY).to_pylist()
        spots: list[tuple[Path, int] | None] = [None] * table.num_rows
        for lang in dict.fromkeys(langs):
            rows = [i for i, value in enumerate(langs) if value == lang]
            subset = table.take(pa.array(rows, pa.int64())).drop_columns([LANGUAGE_KEY])
            writer = self._writer(language_directory(lang))
            for row, spot in zip(rows, writer.write(subset), strict=True):
                spots[row] = spot
        return spots

    def close(self, always: bool) -> None:
        if not self.writers and always:  # an empty dataset is still a readable, typed one
            self._writer(language_directory(None))
        for writer in self.writers.values():
            writer.close(always=always)


@dataclass
class VersionTally:
    """What a version's documents add up to, as they are written: one for the whole version in
    this process, one per chunk on Dask (added up in chunk order, so `languages` keeps the
    order of first appearance)."""

    kept: int = 0
    removed: int = 0
    bytes_out: int = 0
    languages: Counter[str] = field(default_factory=Counter)
    removed_by_stage: dict[str, Counter[str]] = field(default_factory=dict)

    def count_kept(self, table: pa.Table) -> None:
        self.kept += table.num_rows
        self.languages.update(table.column(LANGUAGE_KEY).to_pylist())
        self.bytes_out += sum(len(text.encode("utf-8")) for text in table.column("text").to_pylist())

    def count_removed(self, stage: str, reasons: Sequence[str]) -> None:
        if not reasons:  # a stage appears in the counts only once it removed something
            return
        self.removed_by_stage.setdefault(stage, Counter()).update(reasons)
        self.removed += len(reasons)

    def add(self, other: VersionTally) -> None:
        self.kept += other.kept
        self.removed += other.removed
        self.bytes_out += other.bytes_out
        self.languages.update(other.languages)
        for stage, reasons in other.removed_by_stage.items():
            self.removed_by_stage.setdefault(stage, Counter()).update(reasons)


def copy_file_removals(path: str, removed_parts: _PartWriter, tally: VersionTally) -> None:
    """The responses a file's own steps dropped (its staged `removed` file) into `removed/`."""
    for batch in pq.ParquetFile(path).iter_batches():
        table = pa.Table.from_batches([batch], REMOVED_SCHEMA)
        for stage, reason in zip(table.column("stage").to_pylist(),
                                 table.column("reason").to_pylist(), strict=True):  # fmt: skip
            tally.count_removed(stage, [reason])
        removed_parts.write(table)


def write_version(writer, out_dir: Path, results: list[FileResult], duplicates: DuplicateReport,
                   config: DataConfig, continuing: bool,
                   selected_out: dict[str, str] | None = None) -> None:  # fmt: skip
    """The body of one version: parts, index, ledger, counts (see `refresh.DatasetRefresh.write`).
    New files go under `writer.path` (laid out like `out_dir`, where the committed dataset is
    read). `selected_out`: ids of non-duplicates the quality classifier's top-fraction selection
    leaves out, with the reason (`top_fraction_drops`)."""
    root, version = writer.path, writer.version
    if not continuing:
        writer.extra.update({"version": 1, "parent_version": None})
    tag = version_name(version)
    duplicate_by_id = duplicates.by_id()
    selected_out = selected_out or {}
    kept_rows = duplicates.kept.row_of()
    tally = VersionTally()
    seen_duplicates = 0
    # (kept row, language it is shingled as, part, row in part)
    index_spots: list[tuple[int, str, Path, int]] = []
    docs = _DocumentParts(root, version, config.docs_per_part)
    removed_parts = _PartWriter(root / REMOVED_DIR, f"part-{tag}-", REMOVED_SCHEMA,
                                config.docs_per_part)  # fmt: skip
    for result in results:
        for batch in pq.ParquetFile(result.candidates_path).iter_batches():
            table = pa.Table.from_batches([batch], DOC_SCHEMA)
            ids = table.column("id").to_pylist()
            is_duplicate = pa.array([doc_id in duplicate_by_id for doc_id in ids])
            is_selected_out = pa.array([doc_id in selected_out for doc_id in ids])
            keep = table.filter(pc.invert(pc.or_(is_duplicate, is_selected_out)))
            for doc_id, lang, (part, row) in zip(keep.column("id").to_pylist(),
                                                 shingled_languages(keep, config.minhash),
                                                 docs.write(keep), strict=True):  # fmt: skip
                index_spots.append((kept_rows[doc_id], lang, part, row))
            tally.count_kept(keep)
            dropped = table.filter(is_duplicate).select(
                ["id", "url", "warc_file", "lang", "warc_offset"]
            )
            rows = []
            for row in dropped.to_pylist():
                duplicate = duplicate_by_id[row["id"]]
                rows.append({**row, "stage": "dedup", "reason": duplicate.reason,
                             "duplicate_of": duplicate.duplicate_of})  # fmt: skip
            tally.count_removed("dedup", [row["reason"] for row in rows])
            seen_duplicates += len(rows)
            left_out = table.filter(is_selected_out).select(
                ["id", "url", "warc_file", "lang", "warc_offset"]
            )
            reasons = [selected_out[row["id"]] for row in left_out.to_pylist()]
            rows += [{**row, "stage": SELECTION_STAGE, "reason": reason}
                     for row, reason in zip(left_out.to_pylist(), reasons)]  # fmt: skip
            tally.count_removed(SELECTION_STAGE, reasons)
            removed_parts.write(pa.Table.from_pylist(rows, REMOVED_SCHEMA))
        copy_file_removals(result.removed_path, removed_parts, tally)
    docs.close(always=version == 1)
    removed_parts.close(always=True)

    if seen_duplicates != len(duplicate_by_id):
        raise AccountingError(
            f"{len(duplicate_by_id) - seen_duplicates} duplicates name documents that are "
            "not among the candidates: the duplicate report is from another run"
        )
    check_accounting(results, tally)
    _write_index(writer, out_dir, duplicates, index_spots, config, continuing)
    write_ledger(root / LEDGER_DIR / f"{tag}.parquet", writer.inputs, version)
    record_version_counts(writer, results, tally, duplicates.stats)


def shingled_languages(table: pa.Table, config: MinHashConfig) -> list[str | None]:
    """The language each document of `table` is shingled as (its index row's `lang`)."""
    return [config.shingle_language_of(lang, declared)
            for lang, declared in zip(table.column(LANGUAGE_KEY).to_pylist(),
                                      table.column("declared_lang").to_pylist())]  # fmt: skip


def empty_parts(root: Path, version: int, config: DataConfig, tally: VersionTally) -> None:
    """The typed, empty parts a version has even without rows: `removed/` always, `docs/` in
    version 1 (an empty dataset is still a readable one)."""
    if not tally.kept and version == 1:
        _DocumentParts(root, version, config.docs_per_part).close(always=True)
    if not tally.removed:
        _PartWriter(root / REMOVED_DIR, f"part-{version_name(version)}-", REMOVED_SCHEMA,
                    config.docs_per_part).close(always=True)  # fmt: skip


def check_accounting(results: Sequence[FileResult], tally: VersionTally) -> None:
    """AccountingError unless kept + removed == the responses read."""
    responses = sum(r.stats["responses"] for r in results)
    if tally.kept + tally.removed != responses:
        raise AccountingError(
            f"kept ({tally.kept}) + removed ({tally.removed}) != responses ({responses}): "
            f"{responses - tally.kept - tally.removed} documents vanished or were counted twice"
        )


def record_version_counts(writer, results: Sequence[FileResult], tally: VersionTally,
                          dedup_stats: dict[str, Any]) -> None:  # fmt: skip
    """The version's counts, the dataset's totals (the parent's plus this version's), its
    inputs and read errors, into `writer` for the manifest."""
    read_errors = [
        {"warc_file": r.warc_file, **error} for r in results for error in r.stats["read_errors"]
    ]
    file_stats = merge_file_stats(results)
    removed_by_stage = tally.removed_by_stage
    version_counts = {
        "warc_files": len(results),
        "responses": sum(r.stats["responses"] for r in results),
        "kept": tally.kept,
        "removed": tally.removed,
        "removed_by_stage": {s: sum(c.values()) for s, c in sorted(removed_by_stage.items())},
        "removed_by_reason": {
            s: dict(sorted(c.items())) for s, c in sorted(removed_by_stage.items())
        },
        "read_errors": len(read_errors),
        "languages": dict(tally.languages.most_common()),
        "bytes_in": sum(r.stats["payload_bytes"] for r in results),
        "bytes_out": tally.bytes_out,
        # documents and bytes in/out of every per-file step, drops by language (data_stats)
        "steps": file_stats["steps"],
        "removed_by_language": file_stats["removed_by_language"],
        # files whose early steps were read from the extraction cache, not recomputed
        "extraction_cache_hits": file_stats["extraction_cache_hits"],
        "dedup": dedup_stats,
    }
    parent = writer.parent or {}
    totals = add_counts({k: v for k, v in parent.get("counts", {}).items() if k != "dedup"},
                        {k: v for k, v in version_counts.items() if k != "dedup"})  # fmt: skip
    totals["languages"] = dict(Counter(totals["languages"]).most_common())
    writer.counts = {**totals, "dedup": dedup_stats}
    writer.inputs = parent.get("inputs", []) + writer.inputs
    writer.extra["version_counts"] = version_counts
    writer.extra["read_errors"] = parent.get("read_errors", []) + read_errors


def _write_index(writer, out_dir: Path, duplicates: DuplicateReport,
                 spots: list[tuple[int, str, Path, int]], config: DataConfig,
                 continuing: bool) -> None:  # fmt: skip
    """`index/vNNNNN.parquet`: rows of the documents kept by this version, numbered after the
    earlier ones; when the earlier index files in `out_dir` are gone (or from other settings),
    the rows rebuilt from the kept documents come first and the old files leave the manifest."""
    root = writer.path
    prior = duplicates.stats.get("prior_documents", 0)
    tables = []
    if continuing and not index_is_usable(out_dir, config.minhash):
        tables.append(rebuild_index(out_dir, config.minhash))
        writer.retired_outputs.update(str(p.relative_to(out_dir)) for p in index_files(out_dir))
    kept: KeptSignatures = duplicates.kept
    rows = [spot[0] for spot in spots]
    subset = KeptSignatures([kept.ids[r] for r in rows], kept.keys[rows], kept.bands[rows],
                            kept.has_bands[rows])  # fmt: skip
    tables.append(index_table(subset, range(prior, prior + len(rows)),
                              [spot[1] for spot in spots],
                              [str(spot[2].relative_to(root)) for spot in spots],
                              [spot[3] for spot in spots], config.minhash))  # fmt: skip
    writer.extra["dedup_index_format"] = INDEX_FORMAT
    path = root / INDEX_DIR / f"{version_name(writer.version)}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), path)


def describe_inputs(
    results: Sequence[FileResult],
    inputs: Sequence[str | os.PathLike[str] | dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """Each input as `{"path", "bytes", "sha256"}`, reusing the digests computed while
    processing (inputs that are URLs are matched by their text, local paths resolved)."""
    by_path = {r.warc_path: r for r in results}
    items = inputs if inputs is not None else [r.warc_path for r in results]
    described = []
    for item in items:
        if isinstance(item, dict):
            described.append(item)
            continue
        text = os.fspath(item)
        result = by_path.get(text) or by_path.get(str(Path(text).resolve()))
        if result is not None:
            described.append(result.input_description())
        else:
            described.append(describe_input(text))
    return described
