"""Step 1 of the data stage, one call per WARC file on any worker: read responses, check HTTP
status and size, decide HTML, decode, extract the main text, identify the language, apply the
quality filters, redact PII. Candidates and removals stream to staged Parquet files; the call
returns a small picklable `FileResult`."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.tasks.data_config import DataConfig
from lmforge.tasks.filters import DocumentFilter, first_rejection
from lmforge.tasks.html_text import decode_page, extract_main_text, html_rejection
from lmforge.tasks.language_id import LanguageIdentifier
from lmforge.tasks.warc import WarcResponse, WarcResponseReader
from resiliparse.parse.html import HTMLParserException

from lmforge.manifest import sha256_file

log = logging.getLogger(__name__)

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
