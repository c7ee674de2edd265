"""`DataConfig`: everything that decides which documents the data stage keeps, with a JSON round
trip so that flows, manifests and the CLI share one typed description. Its text steps' fields
come from the step registry (`steps.registry.TEXT_STEPS`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from lmforge.recipes import parse_language_mapping
from lmforge.tasks.data.dedup import MinHashConfig
from lmforge.tasks.data.filters import URLFilter
from lmforge.tasks.data.html_text import ExtractionConfig
from lmforge.tasks.data.language_id import DEFAULT_VARIANT_GROUPS, LanguageIdentifier
from lmforge.tasks.data.steps.base import Step
from lmforge.tasks.data.steps.language import LanguageFilter
from lmforge.tasks.data.steps.page import Extraction, HtmlCheck, ReadCheck
from lmforge.tasks.data.steps.registry import TEXT_STEPS
from lmforge.tasks.data.warc import DEFAULT_MAX_PAYLOAD_BYTES


class _DataSettings(BaseModel):
    """Everything that decides which documents the data stage keeps.

    A filter set to None (null) is off, and so is any of its rules set to None. Invalid values
    raise pydantic's ValidationError (a ValueError) naming the field, before any work.
    JSON round trip: `DataConfig.from_dict(json.loads(json.dumps(config.to_dict())))`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    languages: tuple[str, ...] | None = Field(
        None,
        description="ISO 639-1 codes to keep (e.g. en, de); empty keeps every language.",
    )
    min_lang_score: float = Field(
        0.65, ge=0.0, le=1.0, description="Minimum fastText language score to keep a document."
    )
    min_lang_scores: dict[str, float] | None = Field(
        None,
        description="Per-language minimum scores overriding min_lang_score, e.g. ja=0.5,en=0.7.",
    )
    lang_variant_groups: tuple[tuple[str, ...], ...] = Field(
        DEFAULT_VARIANT_GROUPS,
        description="Languages whose probabilities add up into one score (Norwegian no/nn).",
    )
    max_payload_bytes: int = Field(
        DEFAULT_MAX_PAYLOAD_BYTES, ge=1, description="Larger HTTP responses are skipped."
    )
    extraction: ExtractionConfig = Field(
        ExtractionConfig(), description="How the main text is taken out of the HTML."
    )
    url_filter: URLFilter | None = Field(
        URLFilter(), description="Drops pages by URL before extraction; null: off."
    )
    step_order: tuple[str, ...] | None = Field(
        None,
        description="Order of the text steps after language ID, every one of them named once "
        f"(default: {','.join(TEXT_STEPS)}).",
    )
    minhash: MinHashConfig = Field(
        MinHashConfig(), description="Near-duplicate detection (MinHash LSH)."
    )
    dedup: bool = Field(
        True,
        description="Remove exact and near duplicates; off keeps them all (an ablation's raw "
        "variant), their signatures still indexed.",
    )
    lang_model_path: str | None = Field(
        None,
        description="fastText language-ID model file: lid.176.bin or a GlotLID model; empty "
        "uses the bundled lid.176.ftz.",
    )
    docs_per_part: int = Field(100_000, ge=1, description="Documents per Parquet part file.")

    @field_validator("languages", mode="before")
    @classmethod
    def _empty_languages_keep_all(cls, value: object) -> object:
        return value or None  # the form's and the CLI's empty list: no language filter

    @field_validator("languages")
    @classmethod
    def _normalise_languages(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        return tuple(sorted({lang.strip().lower() for lang in value if lang.strip()})) or None

    @field_validator("min_lang_scores", mode="before")
    @classmethod
    def _parse_min_lang_scores(cls, value: object) -> object:
        return parse_language_mapping(
            value, "min_lang_scores entry", "LANG=VALUE (e.g. en=0.7,ja=0.5)"
        )

    @field_validator("min_lang_scores")
    @classmethod
    def _check_min_lang_scores(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        scores = {lang.strip().lower(): score for lang, score in value.items()}
        bad = {lang: score for lang, score in scores.items() if not 0.0 <= score <= 1.0}
        if bad:
            raise ValueError(f"scores must be in [0, 1], got {bad}")
        return dict(sorted(scores.items()))

    @field_validator("step_order")
    @classmethod
    def _check_step_order(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and sorted(value) != sorted(TEXT_STEPS):
            raise ValueError(
                f"must name each text step once: {', '.join(TEXT_STEPS)} (got {', '.join(value)})"
            )
        return value

    def min_score_for(self, lang: str) -> float:
        """The minimum language-ID score a document identified as `lang` needs."""
        if self.min_lang_scores and lang in self.min_lang_scores:
            return self.min_lang_scores[lang]
        return self.min_lang_score

    def text_steps(self) -> tuple[Step, ...]:
        """The enabled text steps (their settings are the steps), in the order they run."""
        settings = (getattr(self, name) for name in self.step_order or TEXT_STEPS)
        return tuple(step for step in settings if step is not None)

    def language_identifier(self) -> LanguageIdentifier:
        return LanguageIdentifier(self.lang_model_path, variant_groups=self.lang_variant_groups)

    def early_steps(self) -> list[Step]:
        """The steps whose outcome no later setting changes: read checks, URL filter, HTML
        check, extraction (what `extraction_cache` keeps, with the language identified)."""
        url = [self.url_filter] if self.url_filter is not None else []
        return [ReadCheck(), *url, HtmlCheck(), Extraction(self.extraction)]

    def late_steps(self) -> list[Step]:
        """The language filter and the text steps (loads the language-ID model)."""
        language = LanguageFilter(self.language_identifier(), self.min_score_for, self.languages)
        return [language, *self.text_steps()]

    def steps(self) -> list[Step]:
        """Every step a response goes through, in order."""
        return [*self.early_steps(), *self.late_steps()]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as recorded in the data manifest's params."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _DataSettings:
        """Rebuild from `to_dict()` output. Unknown keys raise TypeError naming them."""
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"unknown DataConfig fields: {', '.join(unknown)}")
        return cls.model_validate(data)



DataConfig = create_model(
    "DataConfig",
    __base__=_DataSettings,
    __module__=__name__,
    __doc__=_DataSettings.__doc__,
    **{
        name: (step.settings | None, Field(step.default, description=step.description))
        for name, step in TEXT_STEPS.items()
    },
)
