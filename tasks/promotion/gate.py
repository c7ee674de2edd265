"""The promotion gate's rule and its record: does a candidate's held-out score beat the
champion's by the configured margin, and the sentence that says why.

Pure: no MLflow, no Prefect. `lmforge.flows.promotion` reads the scores from the registry,
applies the outcome (aliases) and records the `Decision` this module returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmforge.tasks.ablation.compare import HELDOUT_METRICS, PRIMARY_METRIC, lower_is_better

# The gate's outcomes; the manual moves (`lmforge promote`, `lmforge rollback`) have their own.
FIRST_CHAMPION, PROMOTED, CHALLENGER, REJECTED = "champion", "promoted", "challenger", "rejected"
PROMOTED_MANUALLY, ROLLED_BACK = "promoted-manually", "rolled-back"


class GateConfig(BaseModel):
    """How a new model version is judged against the current `@champion`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(
        PRIMARY_METRIC,
        description="Held-out metric the versions are compared on: val_bpb (bits per byte, "
        "comparable across tokenizers) or val_loss (nats per token, only within one tokenizer); "
        "lower is better.",
    )
    min_margin: float = Field(
        0.0, ge=0.0, allow_inf_nan=False,
        description="The candidate must beat the champion by at least this much (absolute, in "
        "the metric's unit); 0: any improvement.",
    )  # fmt: skip
    on_reject: Literal["challenger", "none"] = Field(
        "challenger",
        description="A version that does not beat the champion: `challenger` gets the "
        "@challenger alias; `none` is deleted from the registry (its run keeps its files).",
    )
    heldout: str | None = Field(
        None,
        description="Held-out set to pin for a new model line instead of the dataset's val "
        "split: a JSONL file of documents (text; id, lang optional) or a data-stage directory "
        "(all its documents). Ignored once the model line has a pinned set.",
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in HELDOUT_METRICS:
            raise ValueError(f"metric {metric!r} is not one of {', '.join(HELDOUT_METRICS)}")
        return metric


@dataclass(frozen=True)
class Decision:
    """What the gate (or a manual move) did with a version of a registered model, and why.

    Values are the metric on the model line's pinned held-out set; None where a manual move
    concerns a version never scored there."""

    registered_name: str
    outcome: str  # FIRST_CHAMPION, PROMOTED, CHALLENGER, REJECTED, PROMOTED_MANUALLY, ROLLED_BACK
    metric: str
    lower_is_better: bool
    candidate_version: str
    candidate_value: float | None
    champion_version: str | None  # the champion the candidate was compared with (or replaced)
    champion_value: float | None
    min_margin: float
    reason: str  # one sentence
    heldout_sha256: str | None = None
    decided_at: str = ""  # ISO 8601, UTC

    @property
    def is_champion(self) -> bool:
        """Whether the candidate holds @champion after this decision."""
        return self.outcome in (FIRST_CHAMPION, PROMOTED, PROMOTED_MANUALLY, ROLLED_BACK)

    def paragraph(self) -> str:
        """The decision as one readable paragraph (a model version's description)."""
        text = f"{self.decided_at} — {self.outcome}: {self.reason}"
        if self.candidate_value is not None or self.champion_value is not None:
            direction = "lower" if self.lower_is_better else "higher"
            text += (
                f" Scores are {self.metric} ({direction} is better) on the model line's pinned "
                f"held-out set (sha256 {(self.heldout_sha256 or '?')[:12]})."
            )
        return text

    def markdown(self) -> str:
        """The decision for a Prefect artifact: the sentence and a table of the numbers."""
        rows = [
            ("model", self.registered_name),
            ("outcome", self.outcome),
            (
                "metric",
                f"{self.metric} ({'lower' if self.lower_is_better else 'higher'} is better)",
            ),
            ("version", f"{self.candidate_version}: {format_value(self.candidate_value)}"),
            ("champion", f"{self.champion_version or '-'}: {format_value(self.champion_value)}"),
            ("min margin", f"{self.min_margin:g}"),
            ("held-out set sha256", self.heldout_sha256 or "-"),
        ]
        table = "".join(f"| {name} | {value} |\n" for name, value in rows)
        return f"# Promotion: {self.registered_name}\n\n{self.reason}\n\n| | |\n|---|---|\n{table}"


def format_value(value: float | None) -> str:
    return "not scored" if value is None else f"{value:.4f}"


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def beats(metric: str, candidate: float, champion: float, min_margin: float) -> bool:
    """Whether `candidate` improves on `champion` by more than nothing and at least
    `min_margin` in the metric's better direction (a tie never promotes)."""
    gain = champion - candidate if lower_is_better(metric) else candidate - champion
    return gain > 0 and gain >= min_margin


def decide(
    registered_name: str,
    version: str,
    value: float,
    champion_version: str | None,
    champion_value: float | None,
    config: GateConfig,
    heldout_sha256: str | None = None,
) -> Decision:
    """The gate's verdict on `version` (scoring `value`) against the current champion (None:
    the model line has none yet, so the version becomes its first champion)."""
    metric, margin = config.metric, config.min_margin
    if champion_version is None:
        outcome = FIRST_CHAMPION
        reason = (
            f"Version {version} of {registered_name} is the model line's first champion "
            f"({metric} {value:.4f})."
        )
    elif champion_value is None:
        raise ValueError(f"champion version {champion_version} has no {metric} to compare with")
    elif beats(metric, value, champion_value, margin):
        outcome = PROMOTED
        reason = (
            f"Version {version} beats champion version {champion_version} on {metric} "
            f"({value:.4f} against {champion_value:.4f}, margin {margin:g}) and becomes @champion."
        )
    else:
        outcome = CHALLENGER if config.on_reject == "challenger" else REJECTED
        fate = (
            "becomes @challenger"
            if outcome == CHALLENGER
            else "is removed from the registry (its run keeps its files)"
        )
        reason = (
            f"Version {version} does not beat champion version {champion_version} on {metric} "
            f"by the margin {margin:g} ({value:.4f} against {champion_value:.4f}) and {fate}."
        )
    return Decision(
        registered_name=registered_name,
        outcome=outcome,
        metric=metric,
        lower_is_better=lower_is_better(metric),
        candidate_version=str(version),
        candidate_value=value,
        champion_version=champion_version,
        champion_value=champion_value,
        min_margin=margin,
        reason=reason,
        heldout_sha256=heldout_sha256,
        decided_at=now_utc(),
    )
