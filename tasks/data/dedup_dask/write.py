"""A dataset version written by the workers from a distributed dedup's result: the files of
`dataset_writer.write_version` - `docs/lang=xx/` and `removed/` parts, `index/vNNNNN.parquet` -
with the same rows under the same names, and only small per-chunk summaries in the flow.

1. `count_chunk`, per dedup chunk: its kept documents per language folder and its removed
   rows (reads the `lang` column and the removal files only).
2. In the flow, prefix sums in chunk order: each chunk's first row in every part series and
   its first kept document's index `seq`. One process writes the files in that same order, so
   these are its numbers, and a part's name and rows follow from them.
3. `write_chunk`, per chunk: its rows into the parts they fall in. A part only this chunk
   fills is written under its final name; a part shared with neighbouring chunks gets a piece
   from each, and `merge_part` joins the pieces in chunk order. `write_index` joins the chunks'
   index rows (after the rebuilt earlier index, when the committed one was unusable).

Every file is written under a scratch name in the run's hidden folder and renamed into place,
and its name depends only on (part, chunk): a task retried after its worker died rewrites the
same files, so no document is lost or written twice. The flow commits the manifest as usual.
The quality classifier's `keep_top_fraction` ranks each language over the whole version, which
this does not do: the refresh writes such versions in the flow (`DatasetRefresh.find_duplicates`).
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.dataset_versions import (
    DOCS_DIR,
    INDEX_DIR,
    LEDGER_DIR,
    REMOVED_DIR,
    language_directory,
    write_ledger,
)
from lmforge.tasks.data.dataset_writer import (
    PARTITIONED_DOC_SCHEMA,
    AccountingError,
    VersionTally,
    _DocumentParts,
    _PartWriter,
    check_accounting,
    copy_file_removals,
    empty_parts,
    record_version_counts,
    shingled_languages,
)
from lmforge.tasks.data.dedup import HAS_BANDS, KeptSignatures
from lmforge.tasks.data.dedup_dask.plan import DedupPlan
from lmforge.tasks.data.dedup_dask.report import DistributedDuplicates
from lmforge.tasks.data.dedup_dask.run import Stages, worker_count
from lmforge.tasks.data.dedup_dask.signatures import chunk_rows
from lmforge.tasks.data.dedup_dask.spill import column
from lmforge.tasks.data.dedup_dask.survivors import chunk_removed
from lmforge.tasks.data.dedup_index import (
    INDEX_FORMAT,
    index_files,
    index_is_usable,
    index_schema,
    index_table,
    rebuild_index,
)
from lmforge.tasks.data.warc_processing import DOC_SCHEMA, REMOVED_SCHEMA, FileResult

from lmforge.manifest import sha256_file, version_name

# The run's pieces and scratch files: hidden in the version's folder, removed before the commit.
WRITE_FOLDER_PREFIX = ".writing-"
_REMOVED_COLUMNS = ["id", "url", "warc_file", "lang", "warc_offset"]


@dataclass(frozen=True)
class PartSeries:
    """One folder of numbered parts (`docs/lang=en`, `removed`): the rows each chunk puts in
    it, and the number of each chunk's first row among all of them."""

    folder: str
    starts: tuple[int, ...]
    counts: tuple[int, ...]

    @classmethod
    def of_counts(cls, folder: str, counts: Sequence[int]) -> PartSeries:
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(int).tolist()
        return cls(folder, tuple(starts), tuple(counts))

    def shared_parts(self, rows_per_part: int) -> dict[int, tuple[int, ...]]:
        """The parts whose rows come from more than one chunk, with those chunks in order."""
        chunks_of: dict[int, list[int]] = {}
        for chunk, (start, count) in enumerate(zip(self.starts, self.counts, strict=True)):
            if count:
                for part in range(start // rows_per_part, (start + count - 1) // rows_per_part + 1):
                    chunks_of.setdefault(part, []).append(chunk)
        return {part: tuple(chunks) for part, chunks in chunks_of.items() if len(chunks) > 1}


@dataclass(frozen=True)
class WritePlan:
    """What the write tasks share: the dedup's plan and result folder (`spill`), the version's
    folder (`out`), the staged removal files (one per dedup file), and after `laid_out` the
    part series, each chunk's first kept document and the parts that are merged from pieces."""

    dedup: DedupPlan
    spill: str
    out: str
    version: int
    rows_per_part: int
    removed_paths: tuple[str, ...]
    rebuild_index_from: str | None = None  # a committed dataset whose index is rebuilt first
    series: tuple[PartSeries, ...] = ()
    kept_starts: tuple[int, ...] = ()
    shared: dict[str, dict[int, tuple[int, ...]]] = field(default_factory=dict)

    def laid_out(self, counts: Sequence[dict[str, Any]]) -> WritePlan:
        """The plan with the layout the chunks' counts (`count_chunk`, in chunk order) give."""
        folders = sorted({folder for count in counts for folder in count["docs"]})
        series = [PartSeries.of_counts(folder, [c["docs"].get(folder, 0) for c in counts])
                  for folder in folders]  # fmt: skip
        series.append(PartSeries.of_counts(REMOVED_DIR, [c["removed"] for c in counts]))
        kept = PartSeries.of_counts("", [sum(c["docs"].values()) for c in counts])
        return replace(self, series=tuple(series), kept_starts=kept.starts,
                       shared={s.folder: s.shared_parts(self.rows_per_part) for s in series})  # fmt: skip

    @property
    def merges(self) -> list[tuple[str, int, tuple[int, ...]]]:
        """(folder, part, chunks) of every part joined from pieces."""
        return [(folder, part, chunks) for folder, parts in sorted(self.shared.items())
                for part, chunks in sorted(parts.items())]  # fmt: skip

    def part_path(self, folder: str, part: int) -> Path:
        return Path(self.out) / folder / f"part-{version_name(self.version)}-{part:05d}.parquet"

    def piece_path(self, root: Path, folder: str, part: int, chunk: int) -> Path:
        return root / "pieces" / folder / f"{part:05d}" / f"from-{chunk:05d}.parquet"

    def index_piece_path(self, root: Path, chunk: int) -> Path:
        return root / "index" / f"from-{chunk:05d}.parquet"


def _removed_rows(plan: WritePlan, chunk: int) -> tuple[pa.Table, np.ndarray]:
    """The chunk's removed documents (node, duplicate_of, reason; by node) and their rows in
    the chunk."""
    removed = chunk_removed(Path(plan.spill), chunk)
    return removed, column(removed, "node", np.int64) - plan.dedup.chunk_start(chunk)


def count_chunk(plan: WritePlan, chunk: int, root: str) -> dict[str, Any]:
    """Step 1 for one chunk: {"docs": {docs folder: kept documents}, "removed": rows}."""
    _, removed_rows = _removed_rows(plan, chunk)
    first, end = plan.dedup.chunks[chunk]
    is_removed = np.zeros(sum(f.documents for f in plan.dedup.files[first:end]), bool)
    is_removed[removed_rows] = True
    docs: Counter[str] = Counter()
    row = 0
    for index in range(first, end):
        langs = pq.read_table(plan.dedup.files[index].path, columns=["lang"]).column("lang")
        dropped = is_removed[row : row + len(langs)].tolist()
        docs.update(f"{DOCS_DIR}/{language_directory(lang)}"
                    for lang, out in zip(langs.to_pylist(), dropped, strict=True) if not out)  # fmt: skip
        row += len(langs)
    file_removals = sum(pq.ParquetFile(plan.removed_paths[i]).metadata.num_rows
                        for i in range(first, end))  # fmt: skip
    return {"docs": dict(docs), "removed": len(removed_rows) + file_removals}


def _dedup_removals(dropped: pa.Table, removed: pa.Table, at: np.ndarray) -> pa.Table:
    """`removed/` rows of the duplicates `dropped`, whose decisions are `removed`'s rows `at`."""
    decided = removed.take(pa.array(at, pa.int64()))
    n = dropped.num_rows
    columns = {name: dropped.column(name) for name in _REMOVED_COLUMNS}
    columns.update({"stage": pa.array(["dedup"] * n, pa.string()),
                    "reason": decided.column("reason"),
                    "duplicate_of": decided.column("duplicate_of"),
                    "detail": pa.nulls(n, pa.string())})  # fmt: skip
    return pa.table({name: columns[name] for name in REMOVED_SCHEMA.names}, schema=REMOVED_SCHEMA)


def write_chunk(plan: WritePlan, chunk: int, root: str) -> VersionTally:
    """Step 3 for one chunk: its kept documents, removed rows and index rows; returns what
    they add up to. Raises ValueError when a candidates file changed since the dedup."""
    root, out = Path(root), Path(plan.out)
    config = plan.dedup.config
    removed, removed_rows = _removed_rows(plan, chunk)
    rows = chunk_rows(Path(plan.spill), chunk)
    is_removed = np.zeros(rows.num_rows, bool)
    is_removed[removed_rows] = True

    def place(path: Path, part: int) -> Path:
        folder = path.parent.relative_to(out).as_posix()
        if part in plan.shared.get(folder, {}):
            return plan.piece_path(root, folder, part, chunk)
        return path

    starts = {s.folder: s.starts[chunk] for s in plan.series}
    scratch = root / "scratch"
    docs = _DocumentParts(out, plan.version, plan.rows_per_part,
                          {folder.split("/", 1)[1]: start for folder, start in starts.items()
                           if folder.startswith(DOCS_DIR + "/")}, place, scratch)  # fmt: skip
    removed_parts = _PartWriter(out / REMOVED_DIR, f"part-{version_name(plan.version)}-",
                                REMOVED_SCHEMA, plan.rows_per_part, starts[REMOVED_DIR], place,
                                scratch)  # fmt: skip
    tally = VersionTally()
    spots: list[tuple[Path, int]] = []
    langs: list[str | None] = []
    row = seen = 0
    first, end = plan.dedup.chunks[chunk]
    for index in range(first, end):
        for batch in pq.ParquetFile(plan.dedup.files[index].path).iter_batches():
            table = pa.Table.from_batches([batch], DOC_SCHEMA)
            if row + table.num_rows > len(is_removed):
                raise ValueError(_changed(plan, chunk, rows.num_rows))
            local = np.arange(row, row + table.num_rows)
            row += table.num_rows
            dropped = is_removed[local]
            keep = table.filter(pa.array(~dropped))
            spots += docs.write(keep)
            langs += shingled_languages(keep, config)
            tally.count_kept(keep)
            duplicates = _dedup_removals(table.filter(pa.array(dropped)).select(_REMOVED_COLUMNS),
                                         removed, np.searchsorted(removed_rows, local[dropped]))  # fmt: skip
            tally.count_removed("dedup", duplicates.column("reason").to_pylist())
            seen += duplicates.num_rows
            removed_parts.write(duplicates)
        copy_file_removals(plan.removed_paths[index], removed_parts, tally)
    docs.close(always=False)
    removed_parts.close()
    if row != rows.num_rows:
        raise ValueError(_changed(plan, chunk, rows.num_rows))
    if seen != len(removed_rows):
        raise AccountingError(f"chunk {chunk}: {len(removed_rows) - seen} duplicates not written")
    _write_index_piece(plan, chunk, root, rows, ~is_removed, langs, spots)
    return tally


def _changed(plan: WritePlan, chunk: int, documents: int) -> str:
    first = plan.dedup.files[plan.dedup.chunks[chunk][0]].path
    return (f"chunk {chunk} ({first} ...) no longer holds the {documents} documents the dedup "
            "saw: a candidates file changed during the refresh; run it again")


def _write_index_piece(plan: WritePlan, chunk: int, root: Path, rows: pa.Table,
                       keep: np.ndarray, langs: list[str | None],
                       spots: list[tuple[Path, int]]) -> None:  # fmt: skip
    """The index rows of the chunk's kept documents, numbered after those of earlier chunks."""
    bands = plan.dedup.config.bands
    signatures = KeptSignatures(
        rows.column("id").filter(pa.array(keep)).to_pylist(),
        np.stack((column(rows, "k0", np.uint64), column(rows, "k1", np.uint64)), axis=1)[keep],
        np.stack([column(rows, f"band{b}", np.uint64) for b in range(bands)], axis=1)[keep],
        ((column(rows, "flags", np.uint8) & HAS_BANDS) != 0)[keep],
    )
    first_seq = plan.dedup.offset + plan.kept_starts[chunk]
    out = Path(plan.out)
    table = index_table(signatures, range(first_seq, first_seq + len(spots)), langs,
                        [path.relative_to(out).as_posix() for path, _ in spots],
                        [row for _, row in spots], plan.dedup.config)  # fmt: skip
    _write_parts(plan.index_piece_path(root, chunk), table.schema, [table], [], root)


def _write_parts(target: Path, schema: pa.Schema, tables: Sequence[pa.Table],
                 pieces: Sequence[Path], root: Path) -> None:  # fmt: skip
    """`tables` then the rows of the Parquet `pieces`, in order, as one Parquet file at
    `target`, written under a scratch name and renamed into place (a piece at a time)."""
    partial = root / "scratch" / f"{uuid.uuid4().hex}.parquet"
    partial.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(partial, schema) as writer:
        for table in tables:
            writer.write_table(table)
        for piece in pieces:
            for batch in pq.ParquetFile(piece).iter_batches():
                writer.write_batch(batch)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial.replace(target)


def merge_part(plan: WritePlan, item: int, root: str) -> None:
    """Step 4: one shared part from its chunks' pieces. Raises FileNotFoundError when a
    piece is missing (its chunk's task did not finish)."""
    folder, part, chunks = plan.merges[item]
    pieces = [plan.piece_path(Path(root), folder, part, chunk) for chunk in chunks]
    missing = [str(piece) for piece in pieces if not piece.is_file()]
    if missing:
        raise FileNotFoundError(f"pieces of {folder} part {part} are missing: {missing}")
    schema = REMOVED_SCHEMA if folder == REMOVED_DIR else PARTITIONED_DOC_SCHEMA
    _write_parts(plan.part_path(folder, part), schema, [], pieces, Path(root))


def write_index(plan: WritePlan, item: int, root: str) -> int:
    """Step 4 for the index: `index/vNNNNN.parquet` from the chunks' index rows (after the
    index rebuilt from the committed documents, when asked). Returns its rows."""
    config = plan.dedup.config
    rebuilt = [rebuild_index(plan.rebuild_index_from, config)] if plan.rebuild_index_from else []
    pieces = [plan.index_piece_path(Path(root), chunk) for chunk in range(len(plan.dedup.chunks))]
    target = Path(plan.out) / INDEX_DIR / f"{version_name(plan.version)}.parquet"
    _write_parts(target, index_schema(config), rebuilt, pieces, Path(root))
    return pq.ParquetFile(target).metadata.num_rows


def digest_files(plan: WritePlan, group: int, root: str,
                 groups: Sequence[Sequence[str]]) -> dict[str, str]:  # fmt: skip
    """sha256 of one group of the version's files (paths relative to `plan.out`)."""
    return {path: sha256_file(Path(plan.out) / path) for path in groups[group]}


def _digests_on_workers(stages: Stages, root: Path) -> dict[str, str]:
    """The sha256 of every file the workers wrote under `root` (their scratch folders aside),
    hashed where the files are (a few groups per worker): the flow's process commits the
    manifest without reading the data."""
    written = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    files = sorted(path.as_posix() for path in written
                   if not path.parts[0].startswith(WRITE_FOLDER_PREFIX))  # fmt: skip
    count = max(1, min(len(files), 4 * worker_count(stages.client)))
    groups = [files[start::count] for start in range(count)]
    digests: dict[str, str] = {}
    for part in stages("digest", digest_files, range(count), groups=groups):
        digests.update(part)
    return digests


def write_version_on_workers(writer, out_dir: Path, results: list[FileResult],
                             duplicates: DistributedDuplicates, config: DataConfig,
                             continuing: bool) -> None:  # fmt: skip
    """`dataset_writer.write_version` (without a top-fraction selection) from a distributed
    dedup's result, its files written by tasks on the dedup's cluster into `writer.path`
    (which every worker must reach, as the dedup's spill folder). Raises AccountingError when
    kept + removed differs from the responses or `duplicates` is from other files."""
    root, version = Path(writer.path), writer.version
    if not continuing:
        writer.extra.update({"version": 1, "parent_version": None})
    dedup = duplicates.plan
    if [r.candidates_path for r in results] != [f.path for f in dedup.files]:
        raise AccountingError("the distributed dedup result is from other candidates files")
    rebuild = continuing and not index_is_usable(out_dir, config.minhash)
    plan = WritePlan(dedup, duplicates.root, str(root), version, config.docs_per_part,
                     tuple(r.removed_path for r in results),
                     str(out_dir) if rebuild else None)  # fmt: skip
    scratch = root / f"{WRITE_FOLDER_PREFIX}{uuid.uuid4().hex[:12]}"
    chunks = range(len(dedup.chunks))
    retries = duplicates.cluster.settings.retries
    try:
        with duplicates.cluster.client() as client:
            counts = Stages(client, plan, scratch, retries)("count-chunk", count_chunk, chunks)
            plan = plan.laid_out(counts)
            stages = Stages(client, plan, scratch, retries)
            tallies = stages("write-chunk", write_chunk, chunks)
            stages("merge-part", merge_part, range(len(plan.merges)))
            stages("write-index", write_index, [0])
            writer.file_digests.update(_digests_on_workers(stages, root))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tally = VersionTally()
    for chunk_tally in tallies:
        tally.add(chunk_tally)
    empty_parts(root, version, config, tally)
    check_accounting(results, tally)
    if rebuild:
        writer.retired_outputs.update(str(p.relative_to(out_dir)) for p in index_files(out_dir))
    writer.extra["dedup_index_format"] = INDEX_FORMAT
    write_ledger(root / LEDGER_DIR / f"{version_name(version)}.parquet", writer.inputs, version)
    record_version_counts(writer, results, tally, duplicates.stats)
