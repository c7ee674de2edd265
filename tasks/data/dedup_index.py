"""The dedup index of a data directory: what later refreshes need to deduplicate new documents
against everything kept before, without recomputing old signatures.

One Parquet file per version (`index/v00002.parquet`), one row per kept document, in the order
the documents were seen (`seq`: version, then input file, then position in the file):

    id         string                the kept document
    seq        int64                 its rank in the dataset's order (the survivor rule's order)
    key        fixed_size_binary(16) normalised-text key (exact duplicates)
    bands      fixed_size_binary(8 x bands) LSH band hashes
    has_bands  bool                  False for a text without shingles (exact matching only)
    lang       string                how its text is shingled when a candidate is verified
    part, row  string, int64         where its text is: verification reads only those rows

Only band hashes and keys are held in memory (~130 bytes per kept document at 14 bands); the
text of an old document is read back from its `docs/` part only when it is a candidate.
The index is a pure function of the kept documents: `rebuild_index` recomputes it from them
when index files are missing or were built with other MinHash settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.errors import LmforgeError
from lmforge.tasks.data.dataset_versions import (
    INDEX_DIR,
    committed_files,
    dataset_doc_files,
    document_batches,
    file_version,
)
from lmforge.tasks.data.dedup import (
    KEY_BYTES,
    KeptSignatures,
    MinHashConfig,
    MinHasher,
    key_array,
    normalised_text_key,
    shingle_family,
    shingle_hashes,
    shingles,
)

from lmforge.manifest import read_manifest


# Bumped when the meaning of an index row changes (2: keys personalised by shingle family), so
# that an older index is rebuilt from the kept documents instead of being misread.
INDEX_FORMAT = 2


class DedupIndexError(LmforgeError, RuntimeError):
    """The dedup index does not match the dataset it belongs to."""


def index_schema(config: MinHashConfig) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.string()),
            ("seq", pa.int64()),
            ("key", pa.binary(KEY_BYTES)),
            ("bands", pa.binary(8 * config.bands)),
            ("has_bands", pa.bool_()),
            ("lang", pa.string()),
            ("part", pa.string()),
            ("row", pa.int64()),
        ]
    )


def _fixed_binary(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A fixed_size_binary column as an (n, width // 8) uint64 array, without Python objects."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    data = array.buffers()[1]
    start = array.offset * width
    raw = np.frombuffer(data, np.uint8, count=len(array) * width, offset=start)
    return raw.view("<u8").reshape(len(array), width // 8)


class DedupIndex:
    """The kept documents of a dataset as `PriorDocuments` for `find_duplicates`: keys and
    band hashes in memory, ids and text locations read on demand."""

    def __init__(self, data_dir: Path, table: pa.Table, config: MinHashConfig):
        self.data_dir = Path(data_dir)
        self.config = config
        table = table.sort_by("seq") if table.num_rows else table
        if table.num_rows and table.column("seq").to_pylist() != list(range(table.num_rows)):
            raise DedupIndexError(f"{data_dir}: index rows are not numbered 0..n-1 in order")
        self.keys = _fixed_binary(table.column("key"), KEY_BYTES).copy()
        self.bands = _fixed_binary(table.column("bands"), 8 * config.bands).copy()
        self.has_bands = table.column("has_bands").to_numpy(zero_copy_only=False).astype(bool)
        self._ids = table.column("id")
        self._where = table.select(["lang", "part", "row"])

    def __len__(self) -> int:
        return len(self.keys)

    def ids(self, rows: Sequence[int]) -> list[str]:
        return self._ids.take(pa.array(rows, pa.int64())).to_pylist() if len(rows) else []

    def shingle_sets(self, rows: Sequence[int]) -> dict[int, np.ndarray]:
        """Shingles of the kept documents at `rows`, reading only the row groups that hold them."""
        if not len(rows):
            return {}
        where = self._where.take(pa.array(rows, pa.int64())).to_pylist()
        return shingle_sets_at(self.data_dir, self.config, rows, where)


def shingle_sets_at(
    data_dir: Path, config: MinHashConfig, nodes: Sequence[int], where: Sequence[dict]
) -> dict[int, np.ndarray]:
    """Shingles of kept documents, by node, from their index rows' `lang`, `part` and `row`
    (`where`, one per node): only the row groups of their parts that hold them are read."""
    by_part: dict[str, list[tuple[int, int, str]]] = {}
    for node, spot in zip(nodes, where, strict=True):
        by_part.setdefault(spot["part"], []).append((spot["row"], node, spot["lang"]))
    result: dict[int, np.ndarray] = {}
    for part, wanted in by_part.items():
        parquet = pq.ParquetFile(Path(data_dir) / part)
        starts = np.cumsum([0] + [parquet.metadata.row_group(i).num_rows
                                  for i in range(parquet.num_row_groups)])  # fmt: skip
        groups = sorted({int(np.searchsorted(starts, row, side="right")) - 1
                         for row, _, _ in wanted})  # fmt: skip
        texts: dict[int, str] = {}
        for group in groups:
            column = parquet.read_row_group(group, columns=["text"]).column("text")
            for row, _, _ in wanted:
                if starts[group] <= row < starts[group + 1]:
                    texts[row] = column[row - int(starts[group])].as_py()
        for row, node, lang in wanted:
            result[node] = shingles(texts[row], lang, config)
    return result


def index_files(data_dir: str | os.PathLike[str]) -> list[Path]:
    return committed_files(data_dir, INDEX_DIR)


def index_is_usable(data_dir: str | os.PathLike[str], config: MinHashConfig) -> bool:
    """Whether the committed index files exist and were built with these MinHash settings and
    this index format."""
    manifest = read_manifest(data_dir)
    built_with = manifest.get("params", {}).get("minhash")
    files = index_files(data_dir)
    same_settings = built_with is not None and MinHashConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in built_with.items()}
    ) == config
    same_format = manifest.get("dedup_index_format") == INDEX_FORMAT
    return bool(files) and same_settings and same_format and all(p.is_file() for p in files)


def load_index(data_dir: str | os.PathLike[str], config: MinHashConfig) -> DedupIndex:
    """The committed index of `data_dir`, or one rebuilt from its kept documents when the
    index files are missing or were built with other settings (see `index_is_usable`)."""
    data_dir = Path(data_dir)
    if not index_is_usable(data_dir, config):
        return DedupIndex(data_dir, rebuild_index(data_dir, config), config)
    tables = [pq.read_table(path) for path in index_files(data_dir)]
    return DedupIndex(data_dir, pa.concat_tables(tables), config)


def rebuild_index(data_dir: str | os.PathLike[str], config: MinHashConfig) -> pa.Table:
    """Index rows for every kept document of the committed dataset, recomputed from their
    text: the documents are ordered by (version, input file, WARC offset) - the order they
    were first seen - and hashed one part file at a time."""
    data_dir = Path(data_dir)
    hasher = MinHasher(config)
    files = [(path, str(path.relative_to(data_dir))) for path in dataset_doc_files(data_dir)]
    rows = []  # (version, warc_file, warc_offset, id, part, row in part)
    for path, part in files:
        row_in_part = 0
        for batch in document_batches(path, ["id", "warc_file", "warc_offset"]):
            for doc_id, warc_file, offset in zip(*batch.to_pydict().values(), strict=True):
                rows.append((file_version(part), warc_file, offset, doc_id, part, row_in_part))
                row_in_part += 1
    rows.sort(key=lambda r: r[:3])
    seq_of = {(r[4], r[5]): seq for seq, r in enumerate(rows)}
    n = len(rows)
    keys = [b""] * n
    bands = np.zeros((n, config.bands), np.uint64)
    has_bands = np.zeros(n, bool)
    langs: list[str | None] = [None] * n
    for path, part in files:
        row_in_part = 0
        for batch in document_batches(path, ["text", "lang", "declared_lang"]):
            for text, detected, declared_lang in zip(*batch.to_pydict().values(), strict=True):
                lang = config.shingle_language_of(detected, declared_lang)
                seq = seq_of[(part, row_in_part)]
                keys[seq] = normalised_text_key(text, shingle_family(lang, config))
                langs[seq] = lang
                hashes = shingle_hashes(text, lang, config)
                if len(hashes):
                    bands[seq] = hasher.bands(hasher.signature(hashes))
                    has_bands[seq] = True
                row_in_part += 1
    signatures = KeptSignatures([r[3] for r in rows], key_array(keys), bands, has_bands)
    return index_table(signatures, range(n), langs, [r[4] for r in rows], [r[5] for r in rows],
                       config)  # fmt: skip


def index_table(
    signatures: KeptSignatures,
    seqs: Sequence[int],
    langs: Sequence[str | None],
    parts: Sequence[str],
    rows: Sequence[int],
    config: MinHashConfig,
) -> pa.Table:
    """Index rows (see the module docstring) for `signatures`, row for row."""
    n = len(signatures.ids)
    keys = np.ascontiguousarray(signatures.keys, "<u8").reshape(n, 2)
    bands = np.ascontiguousarray(signatures.bands, "<u8").reshape(n, config.bands)
    width = 8 * config.bands
    columns = {
        "id": pa.array(signatures.ids, pa.string()),
        "seq": pa.array(seqs, pa.int64()),
        "key": pa.Array.from_buffers(pa.binary(KEY_BYTES), n, [None, pa.py_buffer(keys.tobytes())]),
        "bands": pa.Array.from_buffers(pa.binary(width), n, [None, pa.py_buffer(bands.tobytes())]),
        "has_bands": pa.array(signatures.has_bands, pa.bool_()),
        "lang": pa.array(langs, pa.string()),
        "part": pa.array(parts, pa.string()),
        "row": pa.array(rows, pa.int64()),
    }
    return pa.table(columns, schema=index_schema(config))
