"""The early work of the data stage, kept for reuse: what the steps that do not depend on any
later filter (read checks, URL filter, HTML check, extraction) and language identification made
of each response of a WARC file. Refreshes that differ only in later settings - the language
threshold, the text steps - read it instead of the WARC file (an ablation's variants share it).

One Parquet file per (input, early settings) pair plus a JSON of the counts the early steps
made; each written under a temporary name and renamed, the JSON last, so a reader sees a whole
entry or none.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.manifest import input_sha256
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.inputs import is_remote
from lmforge.tasks.data.staged_parquet import StagedParquet
from lmforge.tasks.data.steps.base import Document, Removal
from lmforge.tasks.data.warc import WarcResponse

# Bumped whenever an entry's layout or meaning changes.
CACHE_FORMAT = 1
EARLY_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("warc_offset", pa.int64()),
        ("warc_date", pa.string()),
        ("stage", pa.string()),  # the early step that dropped it, null for a document with text
        ("reason", pa.string()),
        ("text", pa.string()),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("declared_lang", pa.string()),
        ("charset", pa.string()),
    ]
)


def early_settings_key(config: DataConfig) -> str:
    """What decides the early work: the payload cap, the URL filter, extraction and the
    language-ID model. Thresholds and every later step are left out on purpose."""
    settings = config.to_dict()
    early = {key: settings[key] for key in ("max_payload_bytes", "url_filter", "extraction",
                                            "lang_model_path", "lang_variant_groups")}  # fmt: skip
    return hashlib.sha256(json.dumps([CACHE_FORMAT, early], sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class EarlyEntry:
    """The cache entry of one input under one set of early settings."""

    rows_path: Path
    counts_path: Path

    @classmethod
    def of(cls, cache_dir: str | os.PathLike[str], warc_path: str | os.PathLike[str],
           config: DataConfig) -> EarlyEntry:  # fmt: skip
        # Remote inputs are keyed by URL, as the per-file cache does: crawl files are immutable.
        content = str(warc_path) if is_remote(warc_path) else input_sha256(warc_path)
        key = hashlib.sha256(f"{content}\n{early_settings_key(config)}".encode()).hexdigest()
        directory = Path(cache_dir)
        return cls(directory / f"{key[:40]}.parquet", directory / f"{key[:40]}.json")

    def exists(self) -> bool:
        return self.rows_path.is_file() and self.counts_path.is_file()

    def read_counts(self) -> dict[str, Any]:
        return json.loads(self.counts_path.read_text())

    def documents(self, warc_file: str) -> Iterator[tuple[Document, Removal | None]]:
        """Each response as it left the early steps: a document with its text and language
        (and no removal), or the early removal."""
        for batch in pq.ParquetFile(self.rows_path).iter_batches(batch_size=512):
            for row in batch.to_pylist():
                response = WarcResponse(row["url"], row["id"], warc_file, row["warc_offset"], 200,
                                        None, None, b"", row["warc_date"])  # fmt: skip
                doc = Document(response)
                if row["stage"] is not None:
                    yield doc, Removal(row["stage"], row["reason"])
                    continue
                doc.restore(row["text"], row["lang"], row["lang_score"], row["declared_lang"],
                            row["charset"])  # fmt: skip
                yield doc, None


class EarlyWriter(StagedParquet):
    """The rows of one entry, streamed while the file is read; on a clean exit the Parquet file
    and then `counts` (set by the reader before the exit) are committed."""

    def __init__(self, entry: EarlyEntry):
        entry.rows_path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(entry.rows_path, EARLY_SCHEMA)
        self.entry = entry
        self.counts: dict[str, Any] | None = None

    def add(self, doc: Document, removal: Removal | None) -> None:
        response = doc.response
        row = {"id": response.record_id, "url": response.url, "warc_offset": response.offset,
               "warc_date": response.date}  # fmt: skip
        if removal is not None:
            row.update(stage=removal.stage, reason=removal.reason)
        else:
            row.update(text=doc.text, lang=doc.lang, lang_score=doc.lang_score,
                       declared_lang=doc.declared_lang, charset=doc.charset)  # fmt: skip
        self.append(row)

    def __exit__(self, exc_type, exc, traceback) -> None:
        super().__exit__(exc_type, exc, traceback)
        if exc_type is None and self.counts is not None:
            path = self.entry.counts_path
            partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            partial.write_text(json.dumps(self.counts, sort_keys=True))
            partial.replace(path)  # last: an entry counts once both files are there
