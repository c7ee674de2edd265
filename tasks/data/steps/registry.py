"""The text steps of the data stage, listed once. Each entry becomes a `DataConfig` field of the
same name (its settings; null turns the step off), a CLI flag, a recipe key, a field of the
Prefect form, a row of the funnel and a `stage` of `removed/`: adding a step is one module and
one line here. They run after language ID, in this order unless `DataConfig.step_order` says
otherwise; the steps before them (read, url, html, extract, language) always come first."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.tasks.data.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    PIIFormatter,
)
from lmforge.tasks.data.steps.base import Step
from lmforge.tasks.data.steps.decontaminate import Decontaminate
from lmforge.tasks.data.steps.quality_classifier import QualityClassifierFilter


@dataclass(frozen=True)
class TextStep:
    """A registered step: the type of its settings (a frozen pydantic dataclass that is the
    step itself), its default settings (None: off unless configured) and its help text."""

    settings: type[Step]
    default: Step | None
    description: str


TEXT_STEPS: dict[str, TextStep] = {
    "gopher_repetition": TextStep(
        GopherRepetitionFilter, GopherRepetitionFilter(), "Gopher's repetition rules; null: off."
    ),
    "gopher_quality": TextStep(
        GopherQualityFilter, GopherQualityFilter(), "Gopher's quality rules; null: off."
    ),
    "c4_quality": TextStep(C4QualityFilter, C4QualityFilter(), "C4's quality rules; null: off."),
    "fineweb_quality": TextStep(
        FineWebQualityFilter, FineWebQualityFilter(), "FineWeb's quality rules; null: off."
    ),
    "quality_classifier": TextStep(
        QualityClassifierFilter, None,
        "A fastText quality classifier (`lmforge quality train`) scores every document; null: off.",
    ),  # fmt: skip
    "decontaminate": TextStep(
        Decontaminate, None, "Drops (or cuts) text sharing an n-gram with a benchmark item; null: off."
    ),
    "pii": TextStep(
        PIIFormatter, PIIFormatter(), "Replaces e-mail and IP addresses; null keeps them."
    ),
}

for _name, _step in TEXT_STEPS.items():  # the key is the name everything counts it under
    assert _step.settings.name == _name, f"TEXT_STEPS[{_name!r}] is named {_step.settings.name!r}"
