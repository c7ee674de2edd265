"""The data stage: WARC files in, deduplicated documents as Parquet out, every response accounted.

Three pure steps that an orchestrator maps and joins (and `refresh_dataset` runs in a row):

1. `warc_processing.process_warc_file` (one call per WARC file, any worker): read, extract,
   identify the language, filter; staged Parquet files and a picklable `FileResult` out.
2. `dataset_writer.find_duplicates` (once, over all candidates): exact and near duplicates.
3. `dataset_writer.write_dataset` (once): the final `docs/` and `removed/` parts and the
   manifest, after checking that kept + removed == responses.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.tasks.data_config import DataConfig
from lmforge.tasks.dataset_writer import find_duplicates, write_dataset
from lmforge.tasks.warc_processing import WARC_SUFFIXES, process_warc_file


def resolve_inputs(patterns: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand paths, directories (their `*.warc.gz` and `*.warc` files) and glob patterns into a
    sorted list of distinct WARC files.

    Raises FileNotFoundError naming a pattern that matches no file, and ValueError when two
    inputs share a file name (documents and staging files are named after it).
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    found: set[Path] = set()
    for pattern in patterns:
        text = os.fspath(pattern)
        path = Path(text).expanduser()
        if path.is_dir():
            matches = [p for p in path.iterdir() if p.is_file() and p.name.endswith(WARC_SUFFIXES)]
        elif glob.has_magic(text):
            matches = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
            matches = [p for p in matches if p.is_file()]
        else:
            matches = [path] if path.is_file() else []
        if not matches:
            raise FileNotFoundError(
                f"input {text!r} matches no WARC file (give a file, a directory or a glob "
                "such as 'crawl/*.warc.gz')"
            )
        found.update(p.resolve() for p in matches)
    paths = sorted(found)
    by_name: dict[str, Path] = {}
    for path in paths:
        if path.name in by_name:
            raise ValueError(
                f"two inputs share the file name {path.name!r}: {by_name[path.name]} and {path}; "
                "rename one, since documents record the WARC file by name"
            )
        by_name[path.name] = path
    return paths


def refresh_dataset(
    patterns: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: DataConfig = DataConfig(),
    staging_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run the whole stage in this process: resolve inputs, process each file, deduplicate,
    write the dataset. Staged files go to `staging_dir` (default: a temporary directory removed
    afterwards). Returns the manifest."""
    paths = resolve_inputs(patterns)
    with tempfile.TemporaryDirectory(prefix="lmforge-staging-") as scratch:
        staging = Path(staging_dir) if staging_dir is not None else Path(scratch)
        results = [process_warc_file(path, config, staging) for path in paths]
        duplicates = find_duplicates(results, config)
        return write_dataset(results, duplicates, out_dir, config, inputs=paths)
