"""Step 1 of the data stage, one call per WARC file on any worker: every response goes through
the configured steps (`DataConfig.steps`: read checks, URL filter, HTML check, extraction,
language ID, the text steps of `steps.registry`). Candidates and removals stream to staged
Parquet files; every step's documents and bytes in/out and drop reasons are counted (`stats`); the
call returns a small `FileResult`, which `to_json`/`from_json` keep as plain data (a crashed
refresh resumes from it; nothing is ever unpickled from disk). The file may be local or remote
(`inputs`)."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.manifest import sha256_file
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.declared_language import declared_language
from lmforge.tasks.data.inputs import WARC_SUFFIXES, input_name, local_input, path_inside
from lmforge.tasks.data.steps.base import Document, Removal, StepChain
from lmforge.tasks.data.warc import WarcResponse, WarcResponseReader

log = logging.getLogger(__name__)

__all__ = ["DOC_SCHEMA", "REMOVED_SCHEMA", "WARC_SUFFIXES", "FileResult", "process_warc_file"]

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("declared_lang", pa.string()),
        ("warc_file", pa.string()),
        ("source", pa.string()),
        ("warc_offset", pa.int64()),
        ("warc_date", pa.string()),
        ("charset", pa.string()),
        # the quality classifier's probability that the text is like its positives (if it ran)
        ("quality_score", pa.float32()),
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
        # what the step matched, where it says (e.g. the benchmark item a document contained)
        ("detail", pa.string()),
    ]
)
# Bumped whenever FileResult's JSON changes: a record of another format is not reused.
RESULT_FORMAT = 2


@dataclass(frozen=True)
class FileResult:
    """What processing one WARC file produced: staged Parquet files and its statistics.

    `warc_path`: the resolved local path or the URL it was read from; `size_bytes`, `sha256`:
    of the file as read. `stats`: responses, candidates, read_errors (list of `{offset, message}`), payload_bytes, text_bytes (UTF-8 bytes of
    candidate text), languages, steps and removed_by_language (see `data_stats`).
    """

    warc_path: str
    warc_file: str
    sha256: str
    candidates_path: str
    removed_path: str
    stats: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0

    def input_description(self) -> dict[str, Any]:
        """How the manifest describes this input: `{"path", "bytes", "sha256"}` (path: a local
        path or a URL)."""
        return {"path": self.warc_path, "bytes": self.size_bytes, "sha256": self.sha256}

    def to_json(self) -> str:
        """This result as JSON, its staged files by name (they sit in one staging directory)
        with their sha256, so `from_json` can tell they are the files it describes."""
        staged = {}
        for role, path in (("candidates", self.candidates_path), ("removed", self.removed_path)):
            staged[role] = {"name": Path(path).name, "sha256": sha256_file(path)}
        return json.dumps({
            "format": RESULT_FORMAT, "warc_path": self.warc_path, "warc_file": self.warc_file,
            "sha256": self.sha256, "size_bytes": self.size_bytes, "staged": staged,
            "stats": self.stats,
        }, sort_keys=True)  # fmt: skip

    @classmethod
    def from_json(cls, text: str, staging_dir: str | os.PathLike[str]) -> FileResult:
        """The result `to_json` wrote, its staged files found in `staging_dir`. Raises
        ValueError, trusting nothing, when the record is not valid JSON of this format with
        fields of the right types, or when a staged file is missing, lies outside
        `staging_dir` or does not match its recorded sha256."""
        record = json.loads(text)
        _check_shape(record, _RECORD_SHAPE, "record")
        if record["format"] != RESULT_FORMAT:
            raise ValueError(f"record format {record['format']}, expected {RESULT_FORMAT}")
        paths = {}
        for role, staged in record["staged"].items():
            path = path_inside(staging_dir, staged["name"])
            if not path.is_file():
                raise ValueError(f"staged file {path} is missing")
            if sha256_file(path) != staged["sha256"]:
                raise ValueError(f"staged file {path} does not match its recorded sha256")
            paths[role] = str(path)
        return cls(
            warc_path=record["warc_path"], warc_file=record["warc_file"],
            sha256=record["sha256"], candidates_path=paths["candidates"],
            removed_path=paths["removed"], stats=record["stats"],
            size_bytes=record["size_bytes"],
        )  # fmt: skip


# The types a FileResult record must have; `{str: T}` is a mapping of any keys to T values.
_COUNTS = {str: int}
_STAGED = {"name": str, "sha256": str}
_RECORD_SHAPE: dict[Any, Any] = {
    "format": int, "warc_path": str, "warc_file": str, "sha256": str, "size_bytes": int,
    "staged": {"candidates": _STAGED, "removed": _STAGED},
    "stats": {
        "responses": int, "candidates": int, "payload_bytes": int, "text_bytes": int,
        "languages": _COUNTS,
        "read_errors": [{"offset": int, "message": str}],
        "steps": {str: {"docs_in": int, "docs_out": int, "bytes_in": int, "bytes_out": int,
                        "dropped": _COUNTS}},
        "removed_by_language": {str: _COUNTS},
    },
}  # fmt: skip


def _check_shape(value: Any, shape: Any, where: str) -> None:
    """Raise ValueError naming the first place where `value` does not have `shape`: a type, a
    one-item list (every element), `{str: T}` (any keys) or a dict of exactly these keys."""
    if isinstance(shape, type):
        # bool is an int to isinstance; a count or an offset never is one.
        if not isinstance(value, shape) or (shape is int and isinstance(value, bool)):
            raise ValueError(f"{where} is {type(value).__name__}, expected {shape.__name__}")
        if shape is int and value < 0:
            raise ValueError(f"{where} is negative")
        return
    if isinstance(shape, list):
        if not isinstance(value, list):
            raise ValueError(f"{where} is {type(value).__name__}, expected a list")
        for index, item in enumerate(value):
            _check_shape(item, shape[0], f"{where}[{index}]")
        return
    if not isinstance(value, dict):
        raise ValueError(f"{where} is {type(value).__name__}, expected an object")
    if set(shape) == {str}:
        for key, item in value.items():
            _check_shape(item, shape[str], f"{where}.{key}")
        return
    if set(value) != set(shape):
        raise ValueError(f"{where} has fields {sorted(value)}, expected {sorted(shape)}")
    for key, item_shape in shape.items():
        _check_shape(value[key], item_shape, f"{where}.{key}")


def staged_name(warc_path: str | os.PathLike[str]) -> str:
    """`crawl-00001.warc.gz` (a path or URL) -> `crawl-00001`."""
    name = input_name(warc_path)
    for suffix in WARC_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def candidate_row(doc: Document) -> dict[str, Any]:
    """The `DOC_SCHEMA` row of a document every step kept."""
    response = doc.response
    return {
        "id": response.record_id,
        "url": response.url,
        "text": doc.text,
        "lang": doc.lang,
        "lang_score": doc.lang_score,
        "declared_lang": declared_language(response.url, doc.page.html, response.content_language),
        "warc_file": response.warc_file,
        "source": urlsplit(response.url).hostname or "",
        "warc_offset": response.offset,
        "warc_date": response.date,
        "charset": doc.page.encoding,
        **doc.columns,
    }


def removal_row(response: WarcResponse, removal: Removal) -> dict[str, Any]:
    """The `REMOVED_SCHEMA` row of a document a step dropped."""
    return {
        "id": response.record_id,
        "url": response.url,
        "warc_file": response.warc_file,
        "stage": removal.stage,
        "reason": removal.reason,
        "duplicate_of": None,
        "lang": removal.lang,
        "warc_offset": response.offset,
        "detail": removal.detail,
    }


def process_warc_file(
    warc_path: str | os.PathLike[str], config: DataConfig, staging_dir: str | os.PathLike[str]
) -> FileResult:
    """Read, URL-filter, extract, language-identify and filter one WARC file (see the module
    docstring). `warc_path` is a local path or an `http(s)://`/`s3://` URL; a remote file is
    streamed to a spool file in `staging_dir` (retried with backoff) and deleted afterwards.

    Rows stream to the staged Parquet files in batches, so memory does not grow with the file.
    Deterministic: the same file and config give the same staged files on any worker.
    Damaged records are counted in `stats["read_errors"]`, never raised. Raises
    FileNotFoundError for a missing local file, `inputs.InputError` for a URL that cannot be
    read. Staged files are named after the input (`inputs.input_name`, one safe path
    component) and never written outside `staging_dir`.
    """
    staging = Path(staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    chain = StepChain(config.steps())
    name = staged_name(warc_path)
    candidates_path = path_inside(staging, f"{name}.candidates.parquet")
    removed_path = path_inside(staging, f"{name}.removed.parquet")
    languages: Counter[str] = Counter()
    responses = payload_bytes = text_bytes = 0
    with (
        local_input(warc_path, staging) as source,
        _StagedParquet(candidates_path, DOC_SCHEMA) as candidates,
        _StagedParquet(removed_path, REMOVED_SCHEMA) as removed,
    ):
        reader = WarcResponseReader(
            source.path, max_payload_bytes=config.max_payload_bytes, name=input_name(warc_path)
        )
        for response in reader:
            responses += 1
            payload_bytes += len(response.body)
            doc = Document(response)
            removal = chain.run(doc)
            if removal is not None:
                removed.append(removal_row(response, removal))
            else:
                candidates.append(candidate_row(doc))
                languages[doc.lang] += 1
                text_bytes += doc.size
    stats = {
        "responses": responses,
        "candidates": candidates.rows,
        "read_errors": [{"offset": e.offset, "message": e.message} for e in reader.errors],
        "payload_bytes": payload_bytes,
        "text_bytes": text_bytes,
        "languages": dict(sorted(languages.items())),
        **chain.stats.to_dict(),
    }
    log.info("%s: %d responses, %d candidates, %d read errors",
             reader.name, responses, candidates.rows, len(reader.errors))  # fmt: skip
    return FileResult(
        warc_path=source.location,
        warc_file=reader.name,
        sha256=source.sha256,
        candidates_path=str(candidates_path),
        removed_path=str(removed_path),
        stats=stats,
        size_bytes=source.size,
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
