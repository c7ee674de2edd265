"""The `quality_classifier` step: scores every document with a fastText quality classifier
(`lmforge quality train`, DCLM's recipe) and keeps those scoring at least a threshold per
language. The score is stored in the kept row (`quality_score`), so a later selection - the top
fraction of each language (`keep_top_fraction`, decided over the whole dataset version) or a
mix at shard build - can use it."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass as config_dataclass

from lmforge.recipes import parse_language_mapping
from lmforge.tasks.data.quality.classifier import QualityClassifier
from lmforge.tasks.data.steps.base import Document, Step

SCORE_COLUMN = "quality_score"
DEFAULT_THRESHOLD = 0.5


@functools.lru_cache(maxsize=4)
def _loaded(path: str, mtime_ns: int) -> QualityClassifier:
    # One load per process and model file (a retrained file under the same name is reloaded).
    return QualityClassifier.load(path)


def _per_language(value: object, what: str) -> object:
    return parse_language_mapping(value, what, "LANG=VALUE (e.g. en=0.6,de=0.4)")


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class QualityClassifierFilter(Step):
    """Keeps documents a fastText quality classifier scores highly."""

    name = "quality_classifier"

    model: str = Field(
        ..., description="The classifier: model.bin of `lmforge quality train`, or its folder.",
        json_schema_extra={"flag": "quality-model"},
    )  # fmt: skip
    threshold: float = Field(
        DEFAULT_THRESHOLD, ge=0.0, le=1.0,
        description="Lowest score a document may have to be kept.",
    )
    thresholds: dict[str, float] | None = Field(
        None, description="Per-language thresholds overriding threshold, e.g. en=0.6,de=0.4."
    )
    keep_top_fraction: dict[str, float] | None = Field(
        None,
        description="Instead of (besides) a threshold, keep this share of each language's "
        "best-scored documents of a dataset version, e.g. en=0.5,*=0.8 (* : other languages).",
    )

    @field_validator("thresholds", "keep_top_fraction", mode="before")
    @classmethod
    def _parse(cls, value: object) -> object:
        return _per_language(value, "per-language value")

    @field_validator("thresholds", "keep_top_fraction")
    @classmethod
    def _check_shares(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            bad = {lang: share for lang, share in value.items() if not 0.0 <= share <= 1.0}
            if bad:
                raise ValueError(f"values must be in [0, 1], got {bad}")
        return value

    def __post_init__(self) -> None:
        self.classifier()  # a missing or unreadable model fails now, before any work

    def classifier(self) -> QualityClassifier:
        path = Path(self.model)
        file = path / "model.bin" if path.is_dir() else path
        mtime = file.stat().st_mtime_ns if file.is_file() else 0
        return _loaded(str(path.resolve()), mtime)

    def threshold_for(self, lang: str | None) -> float:
        if self.thresholds and lang in self.thresholds:
            return self.thresholds[lang]
        return self.threshold

    def top_fraction_for(self, lang: str | None) -> float:
        """The share of `lang`'s documents `keep_top_fraction` keeps (1.0: no selection)."""
        shares = self.keep_top_fraction or {}
        return shares.get(lang, shares.get("*", 1.0))

    def apply(self, doc: Document) -> str | None:
        score = self.classifier().score(doc.text)
        doc.columns[SCORE_COLUMN] = score
        return "below_threshold" if score < self.threshold_for(doc.lang) else None
