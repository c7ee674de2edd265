"""Step 1 of the data stage, one call per WARC file on any worker: every response goes through
the configured steps (`DataConfig.steps`: read checks, URL filter, HTML check, extraction,
language ID, the text steps of `steps.registry`). Candidates and removals stream to staged
Parquet files; every step's documents and bytes in/out and drop reasons are counted (`stats`); the
call returns a small `FileResult`, which `to_json`/`from_json` keep as plain data (a crashed
refresh resumes from it; nothing is ever unpickled from disk). The file may be local or remote
(`inputs`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.manifest import sha256_file
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.inputs import WARC_SUFFIXES, input_name, local_input, path_inside
from lmforge.tasks.data.extraction_cache import EarlyEntry, EarlyWriter
from lmforge.tasks.data.staged_parquet import StagedParquet
from lmforge.tasks.data.stats import StepStats
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
        "languages": _COUNTS, "extraction_cache_hits": int,
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
        "declared_lang": doc.declared_lang,
        "warc_file": response.warc_file,
        "source": urlsplit(response.url).hostname or "",
        "warc_offset": response.offset,
        "warc_date": response.date,
        "charset": doc.charset,
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
    warc_path: str | os.PathLike[str],
    config: DataConfig,
    staging_dir: str | os.PathLike[str],
    extraction_cache: str | os.PathLike[str] | None = None,
) -> FileResult:
    """Run one WARC file's responses through the configured steps (see the module docstring).
    `warc_path` is a local path or an `http(s)://`/`s3://` URL; a remote file is streamed to a
    spool file in `staging_dir` (retried with backoff) and deleted afterwards.

    With `extraction_cache`, what the early steps and language identification made of the file
    is read from there when an earlier run with the same early settings left it
    (`extraction_cache.EarlyEntry`), else computed and left there; only the later steps run
    again (`stats["extraction_cache_hits"]` is 1 for a file read from the cache).

    Rows stream to the staged Parquet files in batches, so memory does not grow with the file.
    Deterministic: the same file and config give the same staged files on any worker, with or
    without the cache. Damaged records are counted in `stats["read_errors"]`, never raised.
    Raises FileNotFoundError for a missing local file, `inputs.InputError` for a URL that
    cannot be read. Staged files are named after the input (`inputs.input_name`, one safe path
    component) and never written outside `staging_dir`.
    """
    staging = Path(staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    early_steps, late_steps = config.early_steps(), config.late_steps()
    stats = StepStats([step.name for step in (*early_steps, *late_steps)])
    early, late = StepChain(early_steps, stats), StepChain(late_steps, stats)
    name = staged_name(warc_path)
    entry = EarlyEntry.of(extraction_cache, warc_path, config) if extraction_cache else None
    candidates_path = path_inside(staging, f"{name}.candidates.parquet")
    removed_path = path_inside(staging, f"{name}.removed.parquet")
    languages: Counter[str] = Counter()
    text_bytes = 0
    with (
        StagedParquet(candidates_path, DOC_SCHEMA) as candidates,
        StagedParquet(removed_path, REMOVED_SCHEMA) as removed,
        _early_documents(warc_path, config, staging, early, entry) as (source, documents),
    ):
        for doc, removal in documents:
            removal = removal or late.run(doc)
            if removal is not None:
                removed.append(removal_row(doc.response, removal))
            else:
                candidates.append(candidate_row(doc))
                languages[doc.lang] += 1
                text_bytes += doc.size
    counts = source.counts
    file_stats = {
        "responses": counts["responses"],
        "candidates": candidates.rows,
        "read_errors": counts["read_errors"],
        "payload_bytes": counts["payload_bytes"],
        "text_bytes": text_bytes,
        "languages": dict(sorted(languages.items())),
        "extraction_cache_hits": int(source.from_cache),
        **stats.to_dict(),
    }
    log.info("%s: %d responses, %d candidates, %d read errors%s", source.warc_file,
             counts["responses"], candidates.rows, len(counts["read_errors"]),
             " (early steps from the extraction cache)" if source.from_cache else "")  # fmt: skip
    return FileResult(
        warc_path=source.location,
        warc_file=source.warc_file,
        sha256=source.sha256,
        candidates_path=str(candidates_path),
        removed_path=str(removed_path),
        stats=file_stats,
        size_bytes=source.size,
    )


@dataclass
class _EarlySource:
    """Where a file's early results come from, and what reading it counted (`counts`:
    responses, payload_bytes, read_errors, and `early_steps`: the early steps' statistics,
    filled once the documents have been read)."""

    location: str
    warc_file: str
    sha256: str
    size: int
    from_cache: bool
    counts: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _early_documents(
    warc_path: str | os.PathLike[str], config: DataConfig, staging: Path, early: StepChain,
    entry: EarlyEntry | None,
) -> Iterator[tuple[_EarlySource, Iterator[tuple[Document, Removal | None]]]]:  # fmt: skip
    """Each response after the early steps - a document with its text (and, when caching, its
    language) or its early removal - from the cache entry when it exists (its early counts
    added to `early.stats`), else from the WARC file through `early` (filling the entry when
    one is given)."""
    if entry is not None and entry.exists():
        recorded = entry.read_counts()
        source = _EarlySource(recorded["location"], recorded["warc_file"], recorded["sha256"],
                              recorded["size"], True, recorded["counts"])  # fmt: skip
        early.stats.add(source.counts["early_steps"])
        yield source, entry.documents(source.warc_file)
        return
    with local_input(warc_path, staging) as local:
        reader = WarcResponseReader(
            local.path, max_payload_bytes=config.max_payload_bytes, name=input_name(warc_path)
        )
        source = _EarlySource(local.location, reader.name, local.sha256, local.size, False)
        source.counts = {"responses": 0, "payload_bytes": 0}
        writer = EarlyWriter(entry) if entry is not None else None
        identifier = config.language_identifier() if writer is not None else None

        def documents() -> Iterator[tuple[Document, Removal | None]]:
            for response in reader:
                source.counts["responses"] += 1
                source.counts["payload_bytes"] += len(response.body)
                doc = Document(response)
                removal = early.run(doc)
                if removal is None and identifier is not None:
                    doc.identify(identifier)  # cached with the text: thresholds come later
                if writer is not None:
                    writer.add(doc, removal)
                yield doc, removal

        with writer or contextlib.nullcontext():
            yield source, documents()
            source.counts["read_errors"] = [
                {"offset": error.offset, "message": error.message} for error in reader.errors
            ]
            steps = early.stats.to_dict()["steps"]
            source.counts["early_steps"] = {step.name: steps[step.name] for step in early.steps}
            if writer is not None:
                writer.counts = {"location": source.location, "warc_file": source.warc_file,
                                 "sha256": source.sha256, "size": source.size,
                                 "counts": source.counts}  # fmt: skip
