"""The data stage: WARC files in, deduplicated documents as Parquet out, every response accounted.

`DatasetRefresh` is the one object that runs a refresh, for the flow, the in-process path
(`refresh_dataset`) and the benchmarks alike. Three steps that an orchestrator maps and joins:

1. `warc_processing.process_warc_file` (one call per WARC file, any worker): the configured
   steps; staged Parquet files and a plain-data `FileResult` out.
2. `DatasetRefresh.find_duplicates` (once, over all new candidates): exact and near
   duplicates, also against the documents an earlier version kept.
3. `DatasetRefresh.write` (once): a new dataset version - `docs/lang=xx/` and `removed/`
   parts, dedup index rows, ledger - after checking kept + removed == responses.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.manifest import (
    claim_output_dir,
    manifest_version,
    output_lock,
    read_manifest,
    stage_output,
    stage_version,
)
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.dataset_versions import has_dataset, ledger, unprocessed_inputs
from lmforge.tasks.data.dataset_writer import (
    STAGE_NAME,
    CandidateDocuments,
    continues_dataset,
    describe_inputs,
    has_top_fraction_selection,
    in_order,
    top_fraction_drops,
    write_version,
)
from lmforge.tasks.data.dedup import DuplicateReport
from lmforge.tasks.data.dedup import find_duplicates as find_duplicate_documents
from lmforge.tasks.data.dedup_dask import DaskDedup, DistributedDuplicates, DocumentFile
from lmforge.tasks.data.dedup_dask.write import write_version_on_workers
from lmforge.tasks.data.dedup_index import load_index
from lmforge.tasks.data.inputs import check_remote_inputs, resolve_inputs
from lmforge.tasks.data.warc_processing import FileResult, process_warc_file

__all__ = ["DatasetRefresh", "find_duplicates", "refresh_dataset", "resolve_inputs",
           "write_dataset"]  # fmt: skip

log = logging.getLogger(__name__)


class DatasetRefresh:
    """One refresh of the dataset in `out_dir` with `config`.

    Whether it continues the dataset there (a versioned `data_refresh` output built with the
    same settings: its ledger says which inputs are done, new documents are deduplicated
    against what it kept, a version is added) is decided once, when the refresh is made;
    otherwise the refresh writes version 1. `out_dir` None: a refresh against no dataset (for
    deduplicating results on their own)."""

    def __init__(self, out_dir: str | os.PathLike[str] | None, config: DataConfig):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.config = config
        self.continuing = continues_dataset(out_dir, config)
        self.done = ledger(out_dir) if self.continuing else {}
        self.base_version = manifest_version(read_manifest(out_dir)) if self.continuing else 0

    def pending(self, paths: Sequence[str | os.PathLike[str]]) -> tuple[list, list]:
        """The inputs split into (new, already in the dataset): see `unprocessed_inputs`."""
        if not self.continuing:
            return list(paths), []
        return unprocessed_inputs(self.out_dir, paths)

    def new_results(self, file_results: Sequence[FileResult]) -> list[FileResult]:
        """The results, in order, whose WARC file the dataset has not processed."""
        return [r for r in in_order(file_results) if r.sha256 not in self.done]

    def find_duplicates(
        self, file_results: Sequence[FileResult], dask: DaskDedup | None = None
    ) -> DuplicateReport | DistributedDuplicates:
        """Exact and near duplicates among the new files' candidates (see
        `lmforge.tasks.data.dedup`) and, when continuing, against the documents the dataset
        kept, through its dedup index (rebuilt from the kept documents if missing). With
        `dask`, in partitioned stages on a Dask cluster (`dedup_dask`), with the same result,
        left on disk for `write` to write the version on the same workers - except when the
        quality classifier's `keep_top_fraction` ranks each language over the whole version:
        that selection is done here, so the result is read back as a `DuplicateReport` and
        the version written in this process."""
        if dask is not None:
            files = [DocumentFile(r.candidates_path, r.warc_file, r.stats["candidates"])
                     for r in self.new_results(file_results)]  # fmt: skip
            prior_dir = self.out_dir if self.continuing else None
            dedup = (dask.find_duplicates if has_top_fraction_selection(self.config)
                     else dask.deduplicate)  # fmt: skip
            report = dedup(files, self.config.minhash, prior_dir, remove=self.config.dedup)
        else:
            prior = load_index(self.out_dir, self.config.minhash) if self.continuing else None
            documents = CandidateDocuments(self.new_results(file_results), self.config.minhash)
            report = find_duplicate_documents(documents, self.config.minhash, prior,
                                              remove=self.config.dedup)  # fmt: skip
        report.base_version = self.base_version
        return report

    def write(
        self,
        file_results: Sequence[FileResult],
        duplicates: DuplicateReport | DistributedDuplicates,
        inputs: Sequence[str | os.PathLike[str] | dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Add a dataset version - `docs/lang=xx/part-vNNNNN-*.parquet`,
        `removed/part-vNNNNN-*.parquet`, `index/vNNNNN.parquet`, `ledger/vNNNNN.parquet` - and
        commit it by replacing the manifest atomically (`stage_version`); return the manifest.

        Files already in the ledger are skipped; with nothing new the current manifest is
        returned unchanged. `duplicates` is recomputed here when it was not computed against
        this refresh's base version. A distributed dedup's result left on disk
        (`DistributedDuplicates`) is written by its workers (`dedup_dask.write`) and removed.
        `inputs` describe the WARC files in the manifest (default: the files of `file_results`,
        with the digests computed while processing them). Raises AccountingError, leaving the
        directory as it was, if kept + removed differs from the responses read or a duplicate
        names a document that is not among the candidates.
        Raises OutputRefused, before any work, when the directory holds anything but a
        `data_refresh` output or overlaps an input file."""
        out_dir, config = self.out_dir, self.config
        claim_output_dir(out_dir, STAGE_NAME, [r.warc_path for r in file_results])
        if has_dataset(out_dir) and not self.continuing:
            log.warning("%s holds a dataset built with other settings (or before versions): "
                        "replacing it with a new version 1", out_dir)  # fmt: skip
        results = self.new_results(file_results)
        if self.continuing and not results:
            log.info("%s: every input file is already in the dataset; no new version", out_dir)
            return read_manifest(out_dir)
        candidates = sum(r.stats["candidates"] for r in results)
        on_workers = isinstance(duplicates, DistributedDuplicates)
        if (duplicates.base_version != self.base_version
                or (not on_workers and duplicates.kept is None)
                or duplicates.stats.get("documents") != candidates):  # fmt: skip
            if on_workers:
                duplicates.remove()
            duplicates, on_workers = self.find_duplicates(results), False
        described = [item for item in describe_inputs(results, inputs)
                     if item.get("sha256") not in self.done]  # fmt: skip
        stage = stage_version if self.continuing else stage_output
        if on_workers:
            try:
                with stage(out_dir, STAGE_NAME, config.to_dict(), described) as writer:
                    write_version_on_workers(writer, out_dir, results, duplicates, config,
                                             self.continuing)  # fmt: skip
            finally:
                duplicates.remove()
            return read_manifest(out_dir)
        selected_out = top_fraction_drops(results, duplicates, config)
        with stage(out_dir, STAGE_NAME, config.to_dict(), described) as writer:
            write_version(writer, out_dir, results, duplicates, config, self.continuing,
                          selected_out)  # fmt: skip
        return read_manifest(out_dir)

    def run(
        self,
        patterns: Sequence[str | os.PathLike[str]],
        staging_dir: str | os.PathLike[str] | None = None,
    ) -> dict[str, Any]:
        """The whole stage in this process: resolve inputs, skip those the dataset already
        processed, process each new file, deduplicate, write a version. Staged files go to
        `staging_dir` (default: a temporary directory removed afterwards). Returns the
        manifest (unchanged when every input was processed before)."""
        paths, _already_done = self.pending(resolve_inputs(patterns))
        if self.continuing and not paths:
            return read_manifest(self.out_dir)
        check_remote_inputs(paths)
        with tempfile.TemporaryDirectory(prefix="lmforge-staging-") as scratch:
            staging = Path(staging_dir) if staging_dir is not None else Path(scratch)
            results = [process_warc_file(path, self.config, staging) for path in paths]
            return self.write(results, self.find_duplicates(results), inputs=paths)


def refresh_dataset(
    patterns: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: DataConfig = DataConfig(),
    staging_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """`DatasetRefresh(out_dir, config).run(...)` holding `out_dir`'s lock throughout (waiting
    for another writer to finish). Raises `inputs.InputsUnavailable` before any work when a
    remote input does not answer."""
    with output_lock(out_dir):
        return DatasetRefresh(out_dir, config).run(patterns, staging_dir)


def find_duplicates(
    file_results: Sequence[FileResult],
    config: DataConfig,
    data_dir: str | os.PathLike[str] | None = None,
) -> DuplicateReport:
    """`DatasetRefresh(data_dir, config).find_duplicates(file_results)`."""
    return DatasetRefresh(data_dir, config).find_duplicates(file_results)


def write_dataset(
    file_results: Sequence[FileResult],
    duplicates: DuplicateReport,
    out_dir: str | os.PathLike[str],
    config: DataConfig,
    inputs: Sequence[str | os.PathLike[str] | dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`DatasetRefresh(out_dir, config).write(file_results, duplicates, inputs)`."""
    return DatasetRefresh(out_dir, config).write(file_results, duplicates, inputs)
