"""A data directory as a chain of versions: which files belong to the committed dataset, which
input files it has already processed (the ledger), and how documents are laid out.

Layout of a data directory (every file name carries its version, `v00002`):

    manifest.json                       the current version: outputs = every version's files
    versions/v00001.json                earlier versions' manifests (the chain of parents)
    docs/lang=en/part-v00002-00000.parquet   kept documents, partitioned by language
    removed/part-v00002-00000.parquet   every dropped response with stage and reason
    index/v00002.parquet                dedup index rows of the documents kept by version 2
    ledger/v00002.parquet               sha256 of each input file version 2 processed

    .uncommitted-v00003/                a version being written, laid out like the above

Only files the manifest lists are part of the dataset: a crashed refresh's leftovers are never
read, and are removed by the next refresh. A new version's files are written in the hidden
`.uncommitted-vNNNNN/` and renamed into `docs/`, `removed/`, ... just before the manifest
that lists them, so a plain `pq.read_table("data/docs")` does not see a version being written
(or left half-written by a crash) either. The `lang=xx` directories follow the Hive
convention, so the files do not repeat the language; `document_batches` puts it back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.tasks.data.inputs import is_remote

from lmforge.manifest import MANIFEST_NAME, input_sha256, read_manifest

DOCS_DIR = "docs"
REMOVED_DIR = "removed"
INDEX_DIR = "index"
LEDGER_DIR = "ledger"
LANGUAGE_KEY = "lang"
UNKNOWN_LANGUAGE = "und"
LEDGER_SCHEMA = pa.schema(
    [("sha256", pa.string()), ("path", pa.string()), ("bytes", pa.int64()), ("version", pa.int64())]
)
_VERSION_IN_NAME = re.compile(r"(?:^|-)v(\d{5})(?:-|\.)")
_SAFE_LANGUAGE = re.compile(r"[^a-z0-9_-]")


def has_dataset(data_dir: str | os.PathLike[str]) -> bool:
    """Whether `data_dir` holds a committed dataset (a manifest)."""
    return (Path(data_dir) / MANIFEST_NAME).is_file()


def committed_files(
    data_dir: str | os.PathLike[str], subdir: str, suffix: str = ".parquet"
) -> list[Path]:
    """The files under `subdir` that the current manifest lists, oldest version first (the
    manifest's order); ManifestError if `data_dir` is not a finished stage output."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    prefix = subdir.rstrip("/") + "/"
    return [
        data_dir / entry["path"]
        for entry in manifest["outputs"]
        if entry["path"].startswith(prefix) and entry["path"].endswith(suffix)
    ]


def dataset_doc_files(data_dir: str | os.PathLike[str]) -> list[Path]:
    """The kept-document Parquet files of the committed dataset in `data_dir`, in version order
    (`docs/lang=xx/part-*.parquet`, or `docs/part-*.parquet` in a flat layout)."""
    return committed_files(data_dir, DOCS_DIR)


def file_version(path: str | os.PathLike[str]) -> int:
    """The version a data file belongs to, from the `vNNNNN` in its name (1 when absent)."""
    match = _VERSION_IN_NAME.search(Path(path).name)
    return int(match.group(1)) if match else 1


def language_directory(lang: str | None) -> str:
    """`lang=en`: the Hive-style partition directory of a language (`und` when unknown)."""
    value = _SAFE_LANGUAGE.sub("_", (lang or UNKNOWN_LANGUAGE).lower()) or UNKNOWN_LANGUAGE
    return f"{LANGUAGE_KEY}={value}"


def partition_language(path: str | os.PathLike[str]) -> str | None:
    """The language of a `lang=xx` directory on the path, or None for a flat layout."""
    for part in reversed(Path(path).parent.parts):
        if part.startswith(LANGUAGE_KEY + "="):
            return part.split("=", 1)[1]
    return None


def document_batches(
    path: str | os.PathLike[str], columns: Sequence[str] | None = None, batch_size: int = 1024
) -> Iterator[pa.RecordBatch]:
    """Record batches of one documents file with the `lang` column restored from its partition
    directory when the file does not hold it. A requested column the file lacks (added by a
    later lmforge, e.g. `declared_lang`) comes back as nulls."""
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    wanted = list(columns) if columns is not None else names + [LANGUAGE_KEY]
    wanted = list(dict.fromkeys(wanted))
    stored = [c for c in wanted if c in names]
    language = partition_language(path)
    for batch in parquet.iter_batches(batch_size=batch_size, columns=stored):
        added = {}
        for column in wanted:
            if column == LANGUAGE_KEY and column not in names:
                added[column] = pa.array([language] * batch.num_rows, pa.string())
            elif column not in names:
                added[column] = pa.nulls(batch.num_rows, pa.string())
        if added:
            batch = pa.RecordBatch.from_arrays(
                [*batch.columns, *added.values()], names=[*batch.schema.names, *added]
            )
        yield batch.select(wanted)


def read_documents(
    data_dir: str | os.PathLike[str], columns: Sequence[str] | None = None
) -> pa.Table:
    """All kept documents of the committed dataset as one table (small datasets and tests;
    stream `document_batches` over `dataset_doc_files` for big ones). A column that parts of
    older versions lack (added by a later lmforge, e.g. `declared_lang`) is null there."""
    tables = [pa.Table.from_batches(list(document_batches(path, columns)))
              for path in dataset_doc_files(data_dir)]  # fmt: skip
    tables = [table for table in tables if table.num_rows]
    if not tables:
        raise FileNotFoundError(f"{data_dir} holds no document files")
    return pa.concat_tables(tables, promote_options="default")


# --- the ledger of processed input files -------------------------------------------------


def ledger(data_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """{sha256: {path, bytes, version}} of every input file the committed dataset has processed
    (empty when there is no dataset yet)."""
    if not has_dataset(data_dir):
        return {}
    entries: dict[str, dict[str, Any]] = {}
    for path in committed_files(data_dir, LEDGER_DIR):
        for row in pq.read_table(path).to_pylist():
            entries.setdefault(row.pop("sha256"), row)
    return entries


def unprocessed_inputs(
    data_dir: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]]
) -> tuple[list, list]:
    """Split input files into (new, already_done) by their sha256 against the ledger of the
    dataset in `data_dir`: a file is done when the same bytes were processed before, whatever
    its path. Order and the items themselves are kept. Inputs that are not local files (URLs)
    count as new: their digest is known only once read, and `write_dataset` skips them then.
    Without a dataset every input is new."""
    done_digests = ledger(data_dir)
    new: list = []
    done: list = []
    for item in paths:
        local = None if is_remote(item) else Path(item)
        is_done = local is not None and local.is_file() and input_sha256(local) in done_digests
        (done if is_done else new).append(item)
    return new, done


def write_ledger(path: Path, inputs: Sequence[dict[str, Any]], version: int) -> None:
    """The ledger file of one version: one row per described input file (`describe_input`)."""
    rows = [{"sha256": item["sha256"], "path": item.get("path"), "bytes": item.get("bytes"),
             "version": version} for item in inputs if "sha256" in item]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, LEDGER_SCHEMA), path)


# --- counts over versions ----------------------------------------------------------------


def add_counts(total: Any, more: Any) -> Any:
    """Counts of two versions added up: numbers add, dicts merge key by key, lists concatenate;
    anything else takes the newer value."""
    if isinstance(total, dict) and isinstance(more, dict):
        merged = dict(total)
        for key, value in more.items():
            merged[key] = add_counts(total[key], value) if key in total else value
        return merged
    if isinstance(total, bool) or isinstance(more, bool):
        return more
    if isinstance(total, (int, float)) and isinstance(more, (int, float)):
        return total + more
    if isinstance(total, list) and isinstance(more, list):
        return total + more
    return more
