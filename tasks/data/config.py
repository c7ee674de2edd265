"""`DataConfig`: everything that decides which documents the data stage keeps, with a JSON round
trip so that flows, manifests and the CLI share one typed description."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmforge.tasks.data.dedup import MinHashConfig
from lmforge.tasks.data.filters import (
    C4QualityFilter,
    DocumentFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    PIIFormatter,
    URLFilter,
)
from lmforge.tasks.data.html_text import ExtractionConfig
from lmforge.tasks.data.language_id import DEFAULT_VARIANT_GROUPS
from lmforge.tasks.data.warc import DEFAULT_MAX_PAYLOAD_BYTES

# Nested config classes by field name, to rebuild a DataConfig from its JSON form.
_NESTED_CONFIGS: dict[str, type] = {
    "extraction": ExtractionConfig,
    "url_filter": URLFilter,
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
    "pii": PIIFormatter,
    "minhash": MinHashConfig,
}


@dataclass(frozen=True)
class DataConfig:
    """Everything that decides which documents the data stage keeps.

    `languages`: ISO codes to keep (None keeps all); `min_lang_score`: fastText probability
    below which a document's language is too uncertain to keep, overridden per language by
    `min_lang_scores` ({"ja": 0.5}); `extraction.extractor` picks the HTML extractor;
    `url_filter` drops pages by URL before extraction; a filter set to None is off; `pii` None
    keeps e-mail and IP addresses; `lang_model_path` None uses the bundled lid.176.ftz (a path
    to lid.176.bin or a GlotLID model works too); `lang_variant_groups`: languages whose
    probabilities add up into one score (Norwegian no/nn; see `language_id`).
    JSON round trip: `DataConfig.from_dict(json.loads(json.dumps(config.to_dict())))`.
    """

    languages: tuple[str, ...] | None = None
    min_lang_score: float = 0.65
    min_lang_scores: Mapping[str, float] | None = None
    lang_variant_groups: tuple[tuple[str, ...], ...] = DEFAULT_VARIANT_GROUPS
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    extraction: ExtractionConfig = ExtractionConfig()
    url_filter: URLFilter | None = URLFilter()
    gopher_repetition: GopherRepetitionFilter | None = GopherRepetitionFilter()
    gopher_quality: GopherQualityFilter | None = GopherQualityFilter()
    c4_quality: C4QualityFilter | None = C4QualityFilter()
    fineweb_quality: FineWebQualityFilter | None = FineWebQualityFilter()
    pii: PIIFormatter | None = PIIFormatter()
    minhash: MinHashConfig = MinHashConfig()
    lang_model_path: str | None = None
    docs_per_part: int = 100_000

    def __post_init__(self) -> None:
        if self.languages is not None:
            languages = tuple(sorted({lang.strip().lower() for lang in self.languages}))
            if not languages:
                raise ValueError("languages is empty: pass None to keep every language")
            object.__setattr__(self, "languages", languages)
        if not 0.0 <= self.min_lang_score <= 1.0:
            raise ValueError(f"min_lang_score must be in [0, 1], got {self.min_lang_score}")
        if self.min_lang_scores is not None:
            scores = {lang.strip().lower(): float(score)
                      for lang, score in dict(self.min_lang_scores).items()}  # fmt: skip
            bad = {lang: score for lang, score in scores.items() if not 0.0 <= score <= 1.0}
            if bad:
                raise ValueError(f"min_lang_scores must be in [0, 1], got {bad}")
            object.__setattr__(self, "min_lang_scores", dict(sorted(scores.items())))
        if self.max_payload_bytes <= 0:
            raise ValueError(f"max_payload_bytes must be positive, got {self.max_payload_bytes}")
        if self.docs_per_part <= 0:
            raise ValueError(f"docs_per_part must be positive, got {self.docs_per_part}")

    def min_score_for(self, lang: str) -> float:
        """The minimum language-ID score a document identified as `lang` needs."""
        if self.min_lang_scores and lang in self.min_lang_scores:
            return self.min_lang_scores[lang]
        return self.min_lang_score

    def filters(self) -> tuple[DocumentFilter, ...]:
        """The enabled quality filters, in the order they run (FineWeb's order)."""
        chain = (self.gopher_repetition, self.gopher_quality, self.c4_quality,
                 self.fineweb_quality)  # fmt: skip
        return tuple(f for f in chain if f is not None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Rebuild from `to_dict()` output (lists from JSON become tuples again). Unknown keys
        raise TypeError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"unknown DataConfig fields: {', '.join(unknown)}")
        values = {key: _tuples(value) for key, value in data.items()}
        for key, config_class in _NESTED_CONFIGS.items():
            if isinstance(values.get(key), dict):
                values[key] = config_class(**values[key])
        return cls(**values)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    return value
