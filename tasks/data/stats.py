"""Per-step statistics of the data stage: what each step received, passed on and dropped (why),
counted per WARC file by `StepStats` and merged over a dataset by `merge_file_stats`.

A step's `bytes_in`/`bytes_out` are in the unit that step sees: payload bytes up to extraction,
UTF-8 bytes of the extracted text after it (so `extract` shows how much of the HTML was text).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class _HasStats(Protocol):
    stats: dict[str, Any]


class StepStats:
    """Counters for an ordered list of steps, for one WARC file.

    `passed(step, bytes_in, bytes_out)` and `dropped(step, reason, bytes_in, lang)` record one
    document each; `to_dict()` gives `{"steps": {...}, "removed_by_language": {...}}` in the
    shape `merge_file_stats` documents.
    """

    def __init__(self, steps: Sequence[str]):
        self._steps = {step: _new_step() for step in steps}
        self._by_language: dict[str, Counter[str]] = {}

    def _step(self, step: str) -> dict[str, Any]:
        if step not in self._steps:
            self._steps[step] = _new_step()
        return self._steps[step]

    def passed(self, step: str, bytes_in: int, bytes_out: int | None = None) -> None:
        counts = self._step(step)
        counts["docs_in"] += 1
        counts["docs_out"] += 1
        counts["bytes_in"] += bytes_in
        counts["bytes_out"] += bytes_in if bytes_out is None else bytes_out

    def dropped(self, step: str, reason: str, bytes_in: int, lang: str | None = None) -> None:
        counts = self._step(step)
        counts["docs_in"] += 1
        counts["bytes_in"] += bytes_in
        counts["dropped"][reason] += 1
        if lang is not None:
            self._by_language.setdefault(lang, Counter())[f"{step}:{reason}"] += 1

    def add(self, steps: dict[str, dict[str, Any]]) -> None:
        """Add recorded step counts (`to_dict()["steps"]` of another file's run)."""
        for name, counts in steps.items():
            mine = self._step(name)
            for key in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
                mine[key] += counts[key]
            mine["dropped"].update(counts["dropped"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": {name: _plain(counts) for name, counts in self._steps.items()},
            "removed_by_language": {
                lang: dict(sorted(reasons.items()))
                for lang, reasons in sorted(self._by_language.items())
            },
        }


def _new_step() -> dict[str, Any]:
    return {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "dropped": Counter()}


def _plain(counts: dict[str, Any]) -> dict[str, Any]:
    return {**counts, "dropped": dict(sorted(counts["dropped"].items()))}


_SUMMED = ("responses", "candidates", "payload_bytes", "text_bytes", "extraction_cache_hits")


def merge_file_stats(results: Iterable[_HasStats]) -> dict[str, Any]:
    """One dataset-level summary from the `stats` of many `FileResult`s (any order: the result
    does not depend on it, only step order follows the pipeline).

    Shape::

        {
          "files": 8, "responses": 7553, "candidates": 6264,
          "payload_bytes": ..., "text_bytes": ...,        # payload in, candidate text out
          "read_errors": 0,                               # damaged records skipped
          "steps": {                                      # in pipeline order
            "read": {"docs_in": 7553, "docs_out": 7370, "bytes_in": ..., "bytes_out": ...,
                     "dropped": {"http_404": 36, ...}},
            "url": {...}, "html": {...}, "extract": {...}, "language": {...},
            "gopher_repetition": {...}, ..., "pii": {...}
          },
          "languages": {"en": 2100, ...},                 # candidates per language
          "removed_by_language": {"ja": {"language:low_confidence": 12, ...}, ...}
        }
    """
    summary: dict[str, Any] = {"files": 0, **{key: 0 for key in _SUMMED}, "read_errors": 0}
    steps: dict[str, dict[str, Any]] = {}
    languages: Counter[str] = Counter()
    by_language: dict[str, Counter[str]] = {}
    for result in results:
        stats = result.stats
        summary["files"] += 1
        for key in _SUMMED:
            summary[key] += stats.get(key, 0)
        summary["read_errors"] += len(stats.get("read_errors", ()))
        languages.update(stats.get("languages", {}))
        for lang, reasons in stats.get("removed_by_language", {}).items():
            by_language.setdefault(lang, Counter()).update(reasons)
        for name, counts in stats.get("steps", {}).items():
            merged = steps.setdefault(name, _new_step())
            for key in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
                merged[key] += counts[key]
            merged["dropped"].update(counts["dropped"])
    summary["steps"] = {name: _plain(counts) for name, counts in steps.items()}
    summary["languages"] = dict(sorted(languages.items()))
    summary["removed_by_language"] = {
        lang: dict(sorted(reasons.items())) for lang, reasons in sorted(by_language.items())
    }
    return summary
