"""The data stage: WARC files in, deduplicated documents as Parquet out, every response accounted.

Three pure steps that an orchestrator maps and joins (and `refresh_dataset` runs in a row):

1. `process_warc_file` (one call per WARC file, any worker): read responses, check HTTP status
   and size, decide HTML, decode, extract the main text, identify the language, apply the
   quality filters, redact PII. Writes `<name>.candidates.parquet` (documents that passed) and
   `<name>.removed.parquet` (one row per response that did not, with stage and reason) into a
   staging directory and returns a small picklable `FileResult`.
2. `find_duplicates` (once, over all candidates): exact and near duplicates across files.
3. `write_dataset` (once): the final `docs/` and `removed/` parts and the manifest, after
   checking that kept + removed == responses.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from lmforge.tasks.dedup import DedupDocument, DuplicateReport, MinHashConfig
from lmforge.tasks.dedup import find_duplicates as find_duplicate_documents
from lmforge.tasks.filters import (
    C4QualityFilter,
    DocumentFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    PIIFormatter,
    first_rejection,
)
from lmforge.tasks.html_text import (
    ExtractionConfig,
    decode_page,
    extract_main_text,
    html_rejection,
)
from lmforge.tasks.language_id import LanguageIdentifier
from lmforge.tasks.warc import DEFAULT_MAX_PAYLOAD_BYTES, WarcResponse, WarcResponseReader
from resiliparse.parse.html import HTMLParserException

from lmforge.manifest import describe_input, read_manifest, sha256_file, stage_output

log = logging.getLogger(__name__)

STAGE_NAME = "data_refresh"
WARC_SUFFIXES = (".warc.gz", ".warc")

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("warc_file", pa.string()),
        ("source", pa.string()),
        ("warc_offset", pa.int64()),
        ("warc_date", pa.string()),
        ("charset", pa.string()),
    ]
)
REMOVED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("warc_file", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),
        ("lang", pa.string()),
        ("warc_offset", pa.int64()),
    ]
)


class AccountingError(RuntimeError):
    """Kept plus removed documents do not add up to the responses read: something vanished."""


# Nested config classes by field name, to rebuild a DataConfig from its JSON form.
_NESTED_CONFIGS: dict[str, type] = {
    "extraction": ExtractionConfig,
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
    "pii": PIIFormatter,
    "minhash": MinHashConfig,
}


@dataclass(frozen=True)
class DataConfig:
    """Everything that decides which documents the data stage keeps.

    `languages`: ISO codes to keep (None keeps all); `min_lang_score`: fastText probability
    below which a document's language is too uncertain to keep; a filter set to None is off;
    `pii` None keeps e-mail and IP addresses; `lang_model_path` None uses the bundled lid.176.
    JSON round trip: `DataConfig.from_dict(json.loads(json.dumps(config.to_dict())))`.
    """

    languages: tuple[str, ...] | None = None
    min_lang_score: float = 0.65
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    extraction: ExtractionConfig = ExtractionConfig()
    gopher_repetition: GopherRepetitionFilter | None = GopherRepetitionFilter()
    gopher_quality: GopherQualityFilter | None = GopherQualityFilter()
    c4_quality: C4QualityFilter | None = C4QualityFilter()
    fineweb_quality: FineWebQualityFilter | None = FineWebQualityFilter()
    pii: PIIFormatter | None = PIIFormatter()
    minhash: MinHashConfig = MinHashConfig()
    lang_model_path: str | None = None
    docs_per_part: int = 100_000

    def __post_init__(self) -> None:
        if self.languages is not None:
            languages = tuple(sorted({lang.strip().lower() for lang in self.languages}))
            if not languages:
                raise ValueError("languages is empty: pass None to keep every language")
            object.__setattr__(self, "languages", languages)
        if not 0.0 <= self.min_lang_score <= 1.0:
            raise ValueError(f"min_lang_score must be in [0, 1], got {self.min_lang_score}")
        if self.max_payload_bytes <= 0:
            raise ValueError(f"max_payload_bytes must be positive, got {self.max_payload_bytes}")
        if self.docs_per_part <= 0:
            raise ValueError(f"docs_per_part must be positive, got {self.docs_per_part}")

    def filters(self) -> tuple[DocumentFilter, ...]:
        """The enabled quality filters, in the order they run (FineWeb's order)."""
        chain = (self.gopher_repetition, self.gopher_quality, self.c4_quality,
                 self.fineweb_quality)  # fmt: skip
        return tuple(f for f in chain if f is not None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Rebuild from `to_dict()` output (lists from JSON become tuples again). Unknown keys
        raise TypeError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"unknown DataConfig fields: {', '.join(unknown)}")
        values = {key: _tuples(value) for key, value in data.items()}
        for key, config_class in _NESTED_CONFIGS.items():
            if isinstance(values.get(key), dict):
                values[key] = config_class(**values[key])
        return cls(**values)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class FileResult:
    """What processing one WARC file produced: staged Parquet files and its statistics.

    `stats`: responses, candidates, removed (`{stage: {reason: count}}`), read_errors (list of
    `{offset, message}`), payload_bytes, text_bytes (UTF-8 bytes of candidate text), languages.
    """

    warc_path: str
    warc_file: str
    sha256: str
    candidates_path: str
    removed_path: str
    stats: dict[str, Any] = field(default_factory=dict)


def resolve_inputs(patterns: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand paths, directories (their `*.warc.gz` and `*.warc` files) and glob patterns into a
    sorted list of distinct WARC files.

    Raises FileNotFoundError naming a pattern that matches no file, and ValueError when two
    inputs share a file name (documents and staging files are named after it).
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    found: set[Path] = set()
    for pattern in patterns:
        text = os.fspath(pattern)
        path = Path(text).expanduser()
        if path.is_dir():
            matches = [p for p in path.iterdir() if p.is_file() and p.name.endswith(WARC_SUFFIXES)]
        elif glob.has_magic(text):
            matches = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
            matches = [p for p in matches if p.is_file()]
        else:
            matches = [path] if path.is_file() else []
        if not matches:
            raise FileNotFoundError(
                f"input {text!r} matches no WARC file (give a file, a directory or a glob "
                "such as 'crawl/*.warc.gz')"
            )
        found.update(p.resolve() for p in matches)
    paths = sorted(found)
    by_name: dict[str, Path] = {}
    for path in paths:
        if path.name in by_name:
            raise ValueError(
                f"two inputs share the file name {path.name!r}: {by_name[path.name]} and {path}; "
                "rename one, since documents record the WARC file by name"
            )
        by_name[path.name] = path
    return paths


def staged_name(warc_path: Path) -> str:
    """`crawl-00001.warc.gz` -> `crawl-00001`."""
    name = warc_path.name
    for suffix in WARC_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class _Removal:
    stage: str
    reason: str
    lang: str | None = None


def _judge_response(
    response: WarcResponse,
    config: DataConfig,
    identifier: LanguageIdentifier,
    filters: Sequence[DocumentFilter],
) -> _Removal | dict[str, Any]:
    """A candidate document row, or why the response is removed."""
    if response.status is None:
        return _Removal("read", "invalid_http")
    if response.status != 200:
        return _Removal("read", f"http_{response.status}")
    if response.oversized:
        return _Removal("read", "payload_too_large")
    rejection = html_rejection(response.content_type, response.body)
    if rejection is not None:
        return _Removal("extract", rejection)
    page = decode_page(response.body, response.charset)
    try:
        text = extract_main_text(page.html, config.extraction)
    except HTMLParserException as error:
        log.warning("%s at offset %d: HTML extraction failed: %s",
                    response.warc_file, response.offset, error)  # fmt: skip
        return _Removal("extract", "parse_error")
    if not text:
        return _Removal("extract", "no_main_text")
    prediction = identifier.identify(text)
    if prediction.score < config.min_lang_score:
        return _Removal("language", "low_confidence", prediction.lang)
    if config.languages is not None and prediction.lang not in config.languages:
        return _Removal("language", "unwanted_language", prediction.lang)
    reason = first_rejection(filters, text, prediction.lang)
    if reason is not None:
        return _Removal("quality", reason, prediction.lang)
    if config.pii is not None:
        text = config.pii.redact(text)
    return {
        "id": response.record_id,
        "url": response.url,
        "text": text,
        "lang": prediction.lang,
        "lang_score": prediction.score,
        "warc_file": response.warc_file,
        "source": urlsplit(response.url).hostname or "",
        "warc_offset": response.offset,
        "warc_date": response.date,
        "charset": page.encoding,
    }


def process_warc_file(
    warc_path: str | os.PathLike[str], config: DataConfig, staging_dir: str | os.PathLike[str]
) -> FileResult:
    """Read, extract, language-identify and filter one WARC file (see the module docstring).

    Rows stream to the staged Parquet files in batches, so memory does not grow with the file.
    Deterministic: the same file and config give the same staged files on any worker.
    Damaged records are counted in `stats["read_errors"]`, never raised. Raises
    FileNotFoundError for a missing file.
    """
    path = Path(warc_path)
    reader = WarcResponseReader(path, max_payload_bytes=config.max_payload_bytes)
    identifier = LanguageIdentifier(config.lang_model_path)
    filters = config.filters()
    staging = Path(staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    name = staged_name(path)
    candidates_path = staging / f"{name}.candidates.parquet"
    removed_path = staging / f"{name}.removed.parquet"
    removed_counts: dict[str, Counter[str]] = {}
    languages: Counter[str] = Counter()
    responses = payload_bytes = text_bytes = 0
    with (
        _StagedParquet(candidates_path, DOC_SCHEMA) as candidates,
        _StagedParquet(removed_path, REMOVED_SCHEMA) as removed,
    ):
        for response in reader:
            responses += 1
            payload_bytes += len(response.body)
            verdict = _judge_response(response, config, identifier, filters)
            if isinstance(verdict, _Removal):
                removed_counts.setdefault(verdict.stage, Counter())[verdict.reason] += 1
                removed.append(
                    {
                        "id": response.record_id,
                        "url": response.url,
                        "warc_file": response.warc_file,
                        "stage": verdict.stage,
                        "reason": verdict.reason,
                        "duplicate_of": None,
                        "lang": verdict.lang,
                        "warc_offset": response.offset,
                    }
                )
            else:
                candidates.append(verdict)
                languages[verdict["lang"]] += 1
                text_bytes += len(verdict["text"].encode("utf-8"))
    stats = {
        "responses": responses,
        "candidates": candidates.rows,
        "removed": {stage: dict(sorted(c.items())) for stage, c in sorted(removed_counts.items())},
        "read_errors": [{"offset": e.offset, "message": e.message} for e in reader.errors],
        "payload_bytes": payload_bytes,
        "text_bytes": text_bytes,
        "languages": dict(sorted(languages.items())),
    }
    log.info("%s: %d responses, %d candidates, %d read errors",
             path.name, responses, candidates.rows, len(reader.errors))  # fmt: skip
    return FileResult(
        warc_path=str(path.resolve()),
        warc_file=path.name,
        sha256=sha256_file(path),
        candidates_path=str(candidates_path),
        removed_path=str(removed_path),
        stats=stats,
    )


class _StagedParquet:
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

    def __enter__(self) -> _StagedParquet:
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


def refresh_dataset(
    patterns: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: DataConfig = DataConfig(),
    staging_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run the whole stage in this process: resolve inputs, process each file, deduplicate,
    write the dataset. Staged files go to `staging_dir` (default: a temporary directory removed
    afterwards). Returns the manifest."""
    paths = resolve_inputs(patterns)
    with tempfile.TemporaryDirectory(prefix="lmforge-staging-") as scratch:
        staging = Path(staging_dir) if staging_dir is not None else Path(scratch)
        results = [process_warc_file(path, config, staging) for path in paths]
        duplicates = find_duplicates(results, config)
        return write_dataset(results, duplicates, out_dir, config, inputs=paths)
