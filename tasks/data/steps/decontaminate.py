"""The `decontaminate` step: drops documents that share an n-gram with a benchmark item (GPT-3's
13-gram rule), or cuts the overlapping spans out, so a model is never scored on text it read.

The n-gram index (`decontamination.NgramIndex`) is built once per set of benchmark files and
settings, saved under the cache folder (`$LMFORGE_CACHE_DIR`, default `~/.cache/lmforge`) and
memory-mapped read-only by every worker process that runs the step.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as config_dataclass

from lmforge.manifest import input_sha256, output_lock
from lmforge.tasks.data.decontamination import INDEX_FORMAT, NgramIndex, benchmark_files
from lmforge.tasks.data.steps.base import Document, Drop, Step

OVERLAP = "benchmark_overlap"


def cache_root() -> Path:
    return Path(os.environ.get("LMFORGE_CACHE_DIR") or Path.home() / ".cache" / "lmforge")


@functools.lru_cache(maxsize=4)
def shared_index(paths: tuple[str, ...], n: int, min_item_tokens: int) -> NgramIndex:
    """The index of the benchmark files in `paths`: loaded from the cache when one was saved
    for the same file contents and settings, else built and saved there (under a lock, so
    workers starting together build it once). DecontaminationError names a bad file."""
    files = benchmark_files(paths)
    key = hashlib.sha256(json.dumps(
        [INDEX_FORMAT, n, min_item_tokens, sorted(input_sha256(f) for f in files)]
    ).encode()).hexdigest()[:32]  # fmt: skip
    directory = cache_root() / "decontamination" / key
    with output_lock(directory):
        if not (directory / "manifest.json").is_file():
            NgramIndex.from_paths(paths, n, min_item_tokens).save(directory)
    return NgramIndex.load(directory)


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Decontaminate(Step):
    """Removes training text that overlaps benchmark items."""

    name = "decontaminate"

    benchmarks: tuple[str, ...] = Field(
        ..., min_length=1,
        description="Benchmark files or folders: BLiMP JSONL, HellaSwag/ARC/PIQA/LAMBADA files "
        "as `lmforge eval` reads them, or JSONL with a text field.",
        json_schema_extra={"flag": "decontaminate"},
    )  # fmt: skip
    ngram: int = Field(13, ge=1, description="Tokens (words; characters for CJK) per n-gram.")
    min_item_tokens: int = Field(
        8, ge=1, description="Items shorter than ngram are matched whole from this many tokens."
    )
    mode: Literal["remove", "cut"] = Field(
        "remove", description="remove: drop the document; cut: remove only the matching spans."
    )

    def __post_init__(self) -> None:
        self.index()  # a missing or malformed benchmark file fails now, before any work

    def index(self) -> NgramIndex:
        return shared_index(tuple(self.benchmarks), self.ngram, self.min_item_tokens)

    def apply(self, doc: Document) -> Drop | None:
        index = self.index()
        if self.mode == "remove":
            found = index.first_match(doc.text)
            return None if found is None else Drop(OVERLAP, f"{found.benchmark} {found.item}")
        found = index.matches(doc.text)
        if found:
            doc.text = index.cut(doc.text, found)
            if not doc.text.strip():
                return Drop(OVERLAP, f"{found[0].benchmark} {found[0].item}")
        return None
