"""The comparison of an ablation's variants against its base: per metric the mean over seeds, the
seed-to-seed spread, the difference to the base and a verdict that claims no more than the
numbers carry.

A difference is called `better` or `worse` only when it exceeds twice the pooled seed-to-seed
standard deviation of the two variants (with one seed per variant there is no spread to compare
with: `no spread measured`). A benchmark score also carries the sampling error of its items: a
difference within two standard errors of the difference (`sqrt(se_a^2 + se_b^2)`) is never
called anything but `within 2 SE`, however many seeds agree.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PRIMARY_METRIC = "val_bpb"  # held-out bits per byte: comparable across tokenizations and sizes
HELDOUT_METRICS = ("val_bpb", "val_loss")
LOWER_IS_BETTER = ("val_bpb", "val_loss", "ppl")

BETTER, WORSE = "better", "worse"
WITHIN_SPREAD, WITHIN_SE, NO_SPREAD = "within seed spread", "within 2 SE", "no spread measured"
BASE = "base"


@dataclass(frozen=True)
class Score:
    """One model's value of a metric, with its standard error where the metric has one."""

    value: float
    stderr: float | None = None


@dataclass(frozen=True)
class Summary:
    """A metric over the seeds of one variant."""

    mean: float
    std: float | None  # sample standard deviation over seeds; None with one seed
    n: int
    min: float
    max: float
    stderr: float | None  # the per-seed standard errors' mean (the items are the same each seed)


@dataclass(frozen=True)
class Difference:
    """A variant's summary of one metric against the base's."""

    diff: float  # variant mean - base mean
    spread: float | None  # pooled seed-to-seed standard deviation; None: not measured
    stderr: float | None  # standard error of the difference; None: the metric has none
    verdict: str


def lower_is_better(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER


def summarize(scores: Sequence[Score]) -> Summary:
    """Mean, sample std (None for one score), count, range and mean standard error."""
    if not scores:
        raise ValueError("no scores to summarize")
    values = [score.value for score in scores]
    errors = [score.stderr for score in scores]
    return Summary(
        mean=statistics.fmean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        n=len(values),
        min=min(values),
        max=max(values),
        stderr=statistics.fmean(errors) if all(e is not None for e in errors) else None,
    )


def pooled_std(a: Summary, b: Summary) -> float | None:
    """sqrt(((n_a-1) s_a^2 + (n_b-1) s_b^2) / (n_a + n_b - 2)); None when neither has two
    seeds (no spread was measured)."""
    dof = (a.n - 1) + (b.n - 1)
    if dof == 0:
        return None
    squares = (a.n - 1) * (a.std or 0.0) ** 2 + (b.n - 1) * (b.std or 0.0) ** 2
    return math.sqrt(squares / dof)


def difference(metric: str, variant: Summary, base: Summary) -> Difference:
    """The variant against the base: `better`/`worse` only when the difference exceeds 2 x the
    pooled seed spread and, for a metric with standard errors, 2 SE of the difference."""
    diff = variant.mean - base.mean
    spread = pooled_std(variant, base)
    stderr = None
    if variant.stderr is not None and base.stderr is not None:
        stderr = math.hypot(variant.stderr, base.stderr)
    if stderr is not None and abs(diff) <= 2 * stderr:
        verdict = WITHIN_SE
    elif spread is None:
        verdict = NO_SPREAD
    elif abs(diff) <= 2 * spread:
        verdict = WITHIN_SPREAD
    else:
        verdict = BETTER if (diff < 0) == lower_is_better(metric) else WORSE
    return Difference(diff, spread, stderr, verdict)


def accuracy_stderr(accuracy: float, n: int) -> float:
    """The standard error of an accuracy over n independent items: sqrt(p(1-p)/n)."""
    return math.sqrt(accuracy * (1 - accuracy) / n)


def blimp_stderr(accuracies: Mapping[str, float], pairs: Mapping[str, int]) -> float:
    """The standard error of BLiMP's score, the mean of the paradigms' accuracies:
    sqrt(sum_i p_i(1-p_i)/n_i) / P, which is sqrt(p(1-p)/n) for one paradigm."""
    variance = sum(accuracy_stderr(acc, pairs[name]) ** 2 for name, acc in accuracies.items())
    return math.sqrt(variance) / len(accuracies)


def seed_scores(
    results: Mapping[str, Any], blimp_pairs: Mapping[str, int] | None
) -> dict[str, Score]:
    """The metrics of one evaluation (`results.json` of `lmforge eval`): held-out loss and bits
    per byte, BLiMP with its standard error (`blimp_pairs`: pairs scored per paradigm) and each
    benchmark metric (`hellaswag.acc`) with the standard error the benchmark reported."""
    scores = {name: Score(float(results[name])) for name in HELDOUT_METRICS if name in results}
    if results.get("blimp_acc") is not None:
        paradigms = results.get("blimp") or {}
        stderr = blimp_stderr(paradigms, blimp_pairs) if paradigms and blimp_pairs else None
        scores["blimp_acc"] = Score(float(results["blimp_acc"]), stderr)
    for task, metrics in (results.get("benchmarks") or {}).items():
        for metric in ("acc", "acc_norm", "ppl"):
            if metric in metrics:
                stderr = metrics.get(f"{metric}_stderr")
                if stderr is not None and not math.isfinite(stderr):
                    stderr = None  # one item: no standard error
                scores[f"{task}.{metric}"] = Score(float(metrics[metric]), stderr)
    return scores


def compare_variants(
    scores: Mapping[str, Sequence[Mapping[str, Score]]], base: str
) -> dict[str, dict[str, Any]]:
    """Per variant (the base first) and metric: its summary over seeds and, but for the base,
    its difference to the base. `scores` is variant -> one mapping metric -> Score per seed;
    a metric is compared where both the variant and the base have it."""
    if base not in scores:
        raise ValueError(f"the base variant {base!r} has no scores")
    summaries = {
        name: {
            metric: summarize([seed[metric] for seed in seeds if metric in seed])
            for metric in sorted({m for seed in seeds for m in seed}, key=metric_order)
        }
        for name, seeds in scores.items()
    }
    compared: dict[str, dict[str, Any]] = {}
    for name in [base, *(n for n in scores if n != base)]:
        rows = {}
        for metric, summary in summaries[name].items():
            versus = None
            if name != base and metric in summaries[base]:
                versus = difference(metric, summary, summaries[base][metric])
            rows[metric] = {"summary": summary, "vs_base": versus}
        compared[name] = rows
    return compared


def metric_order(metric: str) -> tuple[int, str]:
    """Held-out bpb first, held-out loss, BLiMP, then benchmarks by name."""
    first = (PRIMARY_METRIC, "val_loss", "blimp_acc")
    return (first.index(metric) if metric in first else len(first), metric)


def verdict_of(name: str, base: str, versus: Difference | None) -> str:
    return BASE if name == base else (versus.verdict if versus else "-")


def comparison_json(
    compared: Mapping[str, Mapping[str, Any]], base: str, extra: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The comparison as plain data: per variant its `extra` (data counts, per-seed scores)
    and per metric its summary, difference and verdict."""
    variants = {}
    for name, rows in compared.items():
        metrics = {}
        for metric, row in rows.items():
            summary, versus = row["summary"], row["vs_base"]
            metrics[metric] = {
                **vars(summary),
                "diff": versus.diff if versus else None,
                "spread": versus.spread if versus else None,
                "diff_stderr": versus.stderr if versus else None,
                "verdict": verdict_of(name, base, versus),
            }
        variants[name] = {**extra.get(name, {}), "metrics": metrics}
    return {"base": base, "primary_metric": PRIMARY_METRIC, "variants": variants}


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as a markdown table, a row per variant: documents kept, tokens of its
    train split, the epochs the shared token budget makes of them, its train documents that
    copy a held-out text, seeds, and per metric `mean ± std (SE)`, the difference to the base
    and the verdict."""
    variants = comparison["variants"]
    base = comparison["base"]
    metrics = sorted({m for v in variants.values() for m in v["metrics"]}, key=metric_order)
    header = ["variant", "documents", "train tokens", "epochs", "held-out copies", "seeds"]
    for metric in metrics:
        header += [metric, f"Δ {metric}", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, variant in variants.items():
        seeds = next(iter(variant["metrics"].values()), {}).get("n", 0)
        cells = [
            f"**{name}**" if name == base else name,
            _count(variant.get("documents")),
            _count(variant.get("train_tokens")),
            "-" if variant.get("epochs") is None else f"{variant['epochs']:.2f}",
            _count(variant.get("heldout_copies")),
            str(seeds),
        ]
        for metric in metrics:
            row = variant["metrics"].get(metric)
            if row is None:
                cells += ["-", "-", "-"]
                continue
            cells += [_value(row), _diff(row), row["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict_lines(comparison: Mapping[str, Any]) -> list[str]:
    """One sentence per variant on the primary metric: `raw: val_bpb 2.3100 vs 2.1000 (+0.2100;
    seed spread 0.0100): worse`."""
    base = comparison["base"]
    variants = comparison["variants"]
    reference = variants[base]["metrics"].get(PRIMARY_METRIC)
    lines = []
    for name, variant in variants.items():
        row = variant["metrics"].get(PRIMARY_METRIC)
        if name == base or row is None or reference is None:
            continue
        spread = f"seed spread {row['spread']:.4f}" if row["spread"] is not None else "one seed"
        lines.append(
            f"{name}: {PRIMARY_METRIC} {row['mean']:.4f} vs {reference['mean']:.4f} "
            f"({row['diff']:+.4f}; {spread}): {row['verdict']}"
        )
    return lines


def _value(row: Mapping[str, Any]) -> str:
    text = f"{row['mean']:.4f}"
    if row.get("std") is not None:
        text += f" ± {row['std']:.4f}"
    if row.get("stderr") is not None:
        text += f" (SE {row['stderr']:.4f})"
    return text


def _diff(row: Mapping[str, Any]) -> str:
    return "-" if row.get("diff") is None else f"{row['diff']:+.4f}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"
