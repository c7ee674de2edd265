"""`AblationConfig`: a base recipe and named variants of its data stage, checked whole before any
work.

The base is a recipe of the pipeline's sections (`data`, `shards`, `model`, `train`, `eval`),
spelled as in `lmforge run --config`. A variant overrides the base's `data` section (any key,
nested as in recipes: `gopher_quality: {min_words: 40}`, `c4_quality: null`) and the mixing
weights of its `shards` section; everything else (tokenizer, model, training budget, evaluation)
is the base's for every variant, so their scores compare. The base is itself a variant, named
`base_name`, with no overrides.
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from lmforge.model.config import ModelSpec
from lmforge.model.train import TrainConfig
from lmforge.recipes import ConfigError, merged_mapping, resolve_sections
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.evaluate.checkpoint import EvalConfig
from lmforge.tasks.tokens.shards import ShardConfig

BASE_SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataConfig, "shards": ShardConfig, "model": ModelSpec, "train": TrainConfig,
    "eval": EvalConfig,
}  # fmt: skip
# A variant may change what the model learns from, never how it learns or is scored.
VARIANT_SECTIONS = ("data", "shards")
# Shard settings a variant may change: the mix. The tokenizer and the split are the base's.
VARIANT_SHARD_KEYS = ("mix_source_weights", "mix_language_weights")
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
HEURISTIC_FILTERS = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")

# The built-in ablation: each step of the default recipe added in turn (the base, `default`,
# is the last: language ID, heuristic filters and dedup).
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "raw": {
        "data": {
            "languages": [], "min_lang_score": 0.0, "dedup": False,
            **{name: None for name in HEURISTIC_FILTERS},
        },
    },
    "language_id": {"data": {"dedup": False, **{name: None for name in HEURISTIC_FILTERS}}},
    "heuristic_filters": {"data": {"dedup": False}},
}  # fmt: skip


@dataclass(frozen=True)
class BaseSections:
    """The base recipe validated into the stage configs."""

    data: DataConfig
    shards: ShardConfig
    model: ModelSpec
    train: TrainConfig
    eval: EvalConfig


@dataclass(frozen=True)
class VariantSections:
    """What one variant's data stage and shard build run with."""

    data: DataConfig
    shards: ShardConfig


class AblationConfig(BaseModel):
    """A data ablation: a base recipe, named variants of its data stage, the training seeds and
    the held-out set every variant is scored on.

    An unknown or invalid key of the base or of a variant raises ConfigError naming the variant
    and the key (with the closest valid key), before any work.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: dict[str, Any] = Field(
        default_factory=dict,
        description="The base recipe: sections data, shards, model, train, eval as in `lmforge "
        "run --config` (missing keys take their defaults). Every variant trains the same model "
        "for the same steps on one tokenizer and is scored by the same evaluation.",
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: copy.deepcopy(DEFAULT_VARIANTS),
        description="Variant name -> overrides of the base's `data` section (any key, nested as "
        "in recipes; null turns a filter off) and of `shards` mix_source_weights / "
        "mix_language_weights. Default: raw extraction, + language ID, + heuristic filters "
        "(the base adds dedup).",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="Training seeds: every variant trains once per seed; two or more measure "
        "the seed-to-seed spread a difference must exceed.",
    )
    base_name: str = Field("default", description="The base variant's name in the results.")
    heldout: str | None = Field(
        None,
        description="Held-out documents every variant is scored on: a data-stage directory or "
        "a JSONL file (field text; id, lang optional). Empty: the base variant's validation "
        "split (documents go there by a hash of their id, so no variant trains on them).",
    )
    curve_tokens: int = Field(
        1 << 16, ge=0,
        description="Held-out tokens scored at every checkpoint, for the loss-against-tokens "
        "curve; 0: final scores only.",
    )  # fmt: skip

    _base: BaseSections = PrivateAttr()
    _variants: dict[str, VariantSections] = PrivateAttr()

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: list[int]) -> list[int]:
        if any(seed < 0 for seed in value) or len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct numbers >= 0, got {value}")
        return value

    @field_validator("base_name")
    @classmethod
    def _check_base_name(cls, value: str) -> str:
        return check_variant_name(value)

    @model_validator(mode="after")
    def _resolve(self) -> AblationConfig:
        self._base = resolve_base(self.base)
        self._variants = {self.base_name: VariantSections(self._base.data, self._base.shards)}
        for name, overrides in self.variants.items():
            check_variant_name(name)
            if name == self.base_name:
                if overrides:
                    raise ConfigError(
                        f"variant {name!r} is the base (base_name): it has no overrides; change "
                        "the base recipe, or give the variant another name"
                    )
                continue
            self._variants[name] = resolve_variant(name, overrides, self._base)
        return self

    def base_sections(self) -> BaseSections:
        return self._base

    def variant_sections(self) -> dict[str, VariantSections]:
        """Every variant's data and shard configs by name, the base first."""
        return dict(self._variants)


def check_variant_name(name: str) -> str:
    """A variant name is a folder name: letters, digits, `_`, `-`, `.`."""
    if not VARIANT_NAME.fullmatch(name):
        raise ConfigError(
            f"variant name {name!r} must start with a letter or digit and hold only letters, "
            "digits, _, - and . (it names a folder)"
        )
    return name


def resolve_base(recipe: Mapping[str, Any]) -> BaseSections:
    """The base recipe as stage configs; ConfigError naming the key (`ablation.base: unknown
    key train.max_step (did you mean train.max_steps?)`)."""
    sections = resolve_sections(
        argparse.Namespace(), BASE_SECTIONS, recipe, recipe_name="ablation.base"
    )
    return BaseSections(**sections)  # type: ignore[arg-type]


def resolve_variant(
    name: str, overrides: Mapping[str, Any], base: BaseSections
) -> VariantSections:
    """The base's data and shard configs with a variant's overrides; ConfigError naming the
    variant and the key when a section, key or value is not allowed."""
    where = f"variant {name!r}"
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where} must be a mapping of section -> overrides (data:, shards:)")
    for section, values in overrides.items():
        if section not in VARIANT_SECTIONS:
            raise ConfigError(
                f"{where}: section {section!r} cannot differ between variants (the model, "
                "training and evaluation are the base's, so that scores compare); a variant "
                f"overrides {' and '.join(VARIANT_SECTIONS)}"
            )
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(f"{where}: section {section!r} must be a mapping of key: value")
    shards = overrides.get("shards") or {}
    for key in shards:
        if key not in VARIANT_SHARD_KEYS:
            raise ConfigError(
                f"{where}: shards.{key} cannot differ between variants (one tokenizer and one "
                f"held-out split for all); a variant may set {', '.join(VARIANT_SHARD_KEYS)}"
            )
    recipe = {
        # Nested mappings merge key by key: `gopher_quality: {min_words: 40}` keeps its other rules.
        "data": merged_mapping(base.data.model_dump(mode="json"), overrides.get("data") or {}),
        "shards": {**base.shards.model_dump(mode="json"), **shards},
    }
    sections = {section: BASE_SECTIONS[section] for section in VARIANT_SECTIONS}
    resolved = resolve_sections(argparse.Namespace(), sections, recipe, recipe_name=where)
    return VariantSections(**resolved)  # type: ignore[arg-type]

