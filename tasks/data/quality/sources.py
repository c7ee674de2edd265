"""The texts of a quality classifier's classes, read from its sources.

A source is one of:
- an lmforge dataset directory (`lmforge data refresh` output): its committed `docs/` files;
- a Parquet file, or a directory of them (read recursively), with a `text` column;
- a JSONL file (`.jsonl`, `.ndjson`, `.json`) of objects with a `text` field.

`check_source` runs before the command's flow starts: the path, the format, the `text` column
(`source_files`), every JSONL line, and some documents (Parquet's row counts; its texts are
read once, by the flow). Reading (`read_source`) checks again and refuses a source without a
single text. A null or empty text is counted and skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.errors import LmforgeError, one_line
from lmforge.manifest import read_manifest
from lmforge.tasks.data.dataset_versions import dataset_doc_files, has_dataset
from lmforge.tasks.data.dataset_writer import STAGE_NAME as DATA_STAGE
from lmforge.tasks.jsonl import read_jsonl

TEXT_FIELD = "text"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIX = ".parquet"
_BATCH_ROWS = 4096


class QualitySourceError(LmforgeError, ValueError):
    """A quality-training source that is missing, in no known format, lacks text, or holds no
    documents; the message names the file."""


@dataclass(frozen=True)
class SourceFile:
    path: Path
    format: Literal["parquet", "jsonl"]


@dataclass
class SourceTexts:
    """The texts of one source in file order, and how many records had none."""

    source: str
    texts: list[str]
    empty: int = 0


def source_files(source: str | Path) -> list[SourceFile]:
    """The files of `source`, checked without reading their texts: the path exists, a dataset
    is a finished data-stage output with documents, a Parquet file opens and has a string
    `text` column, a file is Parquet or JSONL by its suffix. QualitySourceError (or
    ManifestError, for a damaged dataset) names the file otherwise."""
    path = Path(source).expanduser()
    if not path.exists():
        raise QualitySourceError(f"quality source {path} does not exist")
    if path.is_dir():
        if has_dataset(path):
            read_manifest(path, stage=DATA_STAGE)  # ManifestError naming another stage's output
            files = dataset_doc_files(path)
            if not files:
                raise QualitySourceError(
                    f"dataset {path} holds no documents (docs/ is empty): pass another source"
                )
        else:
            # pyarrow's dataset convention: names starting with "." or "_" are not data.
            files = sorted(
                file
                for file in path.rglob(f"*{PARQUET_SUFFIX}")
                if not any(part.startswith((".", "_")) for part in file.relative_to(path).parts)
            )
            if not files:
                raise QualitySourceError(
                    f"quality source {path} is a folder without *.parquet files or an lmforge "
                    "manifest: pass a dataset directory, Parquet files or a JSONL file"
                )
        for file in files:
            check_parquet(file)
        return [SourceFile(file, "parquet") for file in files]
    suffix = path.suffix.lower()
    if suffix == PARQUET_SUFFIX:
        check_parquet(path)
        return [SourceFile(path, "parquet")]
    if suffix in JSONL_SUFFIXES:
        return [SourceFile(path, "jsonl")]
    raise QualitySourceError(
        f"quality source {path} is neither Parquet ({PARQUET_SUFFIX}) nor JSONL "
        f"({', '.join(JSONL_SUFFIXES)}): convert it, or rename it if it is one of them"
    )


def check_parquet(path: Path) -> None:
    """QualitySourceError naming `path` unless it is a Parquet file with a string `text`."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise QualitySourceError(
            f"{path} is not a readable Parquet file ({one_line(error, 200)})"
        ) from error
    if TEXT_FIELD not in schema.names:
        raise QualitySourceError(
            f"{path} has no {TEXT_FIELD!r} column (it has {', '.join(schema.names) or 'none'}): "
            f"quality sources hold their documents in {TEXT_FIELD!r}"
        )
    kind = schema.field(TEXT_FIELD).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise QualitySourceError(f"{path}: column {TEXT_FIELD!r} is {kind}, not text")


def check_source(source: str | Path) -> None:
    """The errors of `read_source` that can be found without keeping the texts or reading
    Parquet pages: `source_files`, each JSONL line, and a source with no documents (a Parquet
    source whose rows are all empty passes, and is refused when read)."""
    documents = False
    for file in source_files(source):
        if file.format == "parquet":
            documents = documents or pq.ParquetFile(file.path).metadata.num_rows > 0
        else:
            for text in _file_texts(file):
                documents = documents or bool(text)
    if not documents:
        raise QualitySourceError(f"quality source {source} holds no documents with text")


def read_source(source: str | Path) -> SourceTexts:
    """Every non-empty text of `source` (`source_files`), in file order. Raises
    QualitySourceError naming the file and line for a JSONL line that is not a JSON object or
    whose `text` is missing or not a string, and naming the source when it has no text."""
    read = SourceTexts(str(source), [])
    for file in source_files(source):
        for text in _file_texts(file):
            if text:
                read.texts.append(text)
            else:
                read.empty += 1
    if not read.texts:
        raise QualitySourceError(
            f"quality source {source} holds no documents with text ({read.empty} empty): "
            "pass another source"
        )
    return read


def read_sources(sources: Sequence[str | Path]) -> list[SourceTexts]:
    """`read_source` of each source; QualitySourceError for an empty list."""
    if not sources:
        raise QualitySourceError("no quality sources given: name at least one per class")
    return [read_source(source) for source in sources]


def _file_texts(file: SourceFile) -> Iterator[str | None]:
    if file.format == "parquet":
        try:
            for batch in pq.ParquetFile(file.path).iter_batches(
                batch_size=_BATCH_ROWS, columns=[TEXT_FIELD]
            ):
                yield from batch.column(0).to_pylist()
        except (OSError, pa.ArrowException) as error:  # a damaged page past the footer
            raise QualitySourceError(
                f"{file.path} could not be read ({one_line(error, 200)})"
            ) from error
        return
    for number, record in read_jsonl(file.path, QualitySourceError):
        if TEXT_FIELD not in record:
            raise QualitySourceError(f"{file.path}:{number}: no {TEXT_FIELD!r} field")
        text = record[TEXT_FIELD]
        if text is not None and not isinstance(text, str):
            raise QualitySourceError(
                f"{file.path}:{number}: {TEXT_FIELD!r} is {type(text).__name__}, not a string"
            )
        yield text
