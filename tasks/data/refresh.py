"""The data stage: WARC files in, deduplicated documents as Parquet out, every response accounted.

Three pure steps that an orchestrator maps and joins (and `refresh_dataset` runs in a row):

1. `warc_processing.process_warc_file` (one call per WARC file, any worker): read, extract,
   identify the language, filter; staged Parquet files and a picklable `FileResult` out.
2. `dataset_writer.find_duplicates` (once, over all new candidates): exact and near
   duplicates, also against the documents an earlier version kept.
3. `dataset_writer.write_dataset` (once): a new dataset version - `docs/lang=xx/` and
   `removed/` parts, dedup index rows, ledger - after checking kept + removed == responses.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.dataset_versions import unprocessed_inputs
from lmforge.tasks.data.dataset_writer import continues_dataset, find_duplicates, write_dataset
from lmforge.tasks.data.inputs import check_remote_inputs, resolve_inputs
from lmforge.tasks.data.warc_processing import process_warc_file

from lmforge.manifest import output_lock, read_manifest

__all__ = ["refresh_dataset", "resolve_inputs"]  # resolve_inputs lives in `inputs`


def refresh_dataset(
    patterns: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: DataConfig = DataConfig(),
    staging_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run the whole stage in this process: resolve inputs, skip those the dataset in
    `out_dir` already processed (its ledger), process each new file, deduplicate against the
    documents kept before, and add a dataset version (see `dataset_writer.write_dataset`).
    Staged files go to `staging_dir` (default: a temporary directory removed afterwards).
    Returns the manifest (unchanged when every input was processed before).

    Holds `out_dir`'s lock throughout, waiting for another writer to finish. Raises
    `inputs.InputsUnavailable` before any work when a remote input does not answer."""
    with output_lock(out_dir):
        paths = resolve_inputs(patterns)
        if continues_dataset(out_dir, config):
            paths, _already_done = unprocessed_inputs(out_dir, paths)
            if not paths:
                return read_manifest(out_dir)
        check_remote_inputs(paths)
        with tempfile.TemporaryDirectory(prefix="lmforge-staging-") as scratch:
            staging = Path(staging_dir) if staging_dir is not None else Path(scratch)
            results = [process_warc_file(path, config, staging) for path in paths]
            duplicates = find_duplicates(results, config, data_dir=out_dir)
            return write_dataset(results, duplicates, out_dir, config, inputs=paths)
