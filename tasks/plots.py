"""Pictures that say more than tables: the data funnel, languages kept, training curves, a
classifier's confusion matrix, an ablation's variants side by side."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

# The steps every response meets first; the text steps follow in their configured order.
FIRST_STEPS = ("read", "url", "html", "extract", "language")


@contextlib.contextmanager
def figure_files() -> Iterator[Path]:
    """A temporary directory for figures that are logged elsewhere and then discarded."""
    with tempfile.TemporaryDirectory(prefix="lmforge-figures-") as tmp:
        yield Path(tmp)


def funnel_rows(
    counts: Mapping[str, Any],
    step_order: Sequence[str] = (),
    steps: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Documents and bytes into and out of each step of the data stage, from a data manifest's
    counts.

    Each row: `step`, `docs_in`, `docs_out`, `removed`, `bytes_in`, `bytes_out`, `reasons`
    (`{reason: documents}`). Per-step statistics of the per-file work (`steps`, else
    `counts["steps"]`: `{step: {docs_in, docs_out, bytes_in, bytes_out, dropped: {reason: n}}}`
    in pipeline order, as `data_stats.merge_file_stats` gives them) are used as they are, with
    the dataset-level dedup step appended. Without them, documents come from
    `removed_by_reason` (steps in `FIRST_STEPS` + `step_order`, then any others) and bytes are
    known only where the stage enters (`bytes_in`) and leaves (`bytes_out`), None in between.
    """
    steps = steps or counts.get("steps")
    if isinstance(steps, Mapping) and steps:
        rows = [_recorded_step(name, step) for name, step in steps.items()]
        if "dedup" not in steps:
            rows.extend(_dataset_steps(counts, rows[-1]))
        return rows
    by_reason = counts.get("removed_by_reason") or {
        stage: {stage: n} for stage, n in counts.get("removed_by_stage", {}).items()
    }
    remaining = int(counts["responses"])
    rows = []
    for step, reasons in _ordered_steps(by_reason, step_order):
        removed = sum(int(n) for n in reasons.values())
        rows.append({"step": step, "docs_in": remaining, "docs_out": remaining - removed,
                     "removed": removed, "bytes_in": None, "bytes_out": None,
                     "reasons": dict(reasons)})  # fmt: skip
        remaining -= removed
    if rows:
        rows[0]["bytes_in"] = counts.get("bytes_in")
        rows[-1]["bytes_out"] = counts.get("bytes_out")
    return rows


def _recorded_step(name: str, step: Mapping[str, Any]) -> dict[str, Any]:
    docs_in, docs_out = int(step.get("docs_in", 0)), int(step.get("docs_out", 0))
    reasons = dict(step.get("dropped") or step.get("reasons") or {})
    return {"step": name, "docs_in": docs_in, "docs_out": docs_out, "removed": docs_in - docs_out,
            "bytes_in": step.get("bytes_in"), "bytes_out": step.get("bytes_out"),
            "reasons": reasons}  # fmt: skip


def _dataset_steps(counts: Mapping[str, Any], previous: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The steps over the whole version after the per-file ones: dedup, then the quality
    classifier's top-fraction selection where one ran (bytes known where the stage ends)."""
    by_reason = counts.get("removed_by_reason", {})
    selected = {reason: n for reason, n in by_reason.get("quality_classifier", {}).items()
                if reason == "below_top_fraction"}  # fmt: skip
    steps = [("dedup", dict(by_reason.get("dedup", {}))), ("top_fraction", selected)]
    rows, docs_in, bytes_in = [], previous["docs_out"], previous["bytes_out"]
    for name, reasons in steps:
        if name != "dedup" and not reasons:
            continue
        removed = sum(reasons.values())
        rows.append({"step": name, "docs_in": docs_in, "docs_out": docs_in - removed,
                     "removed": removed, "bytes_in": bytes_in, "bytes_out": None,
                     "reasons": reasons})  # fmt: skip
        docs_in, bytes_in = docs_in - removed, None
    rows[-1]["bytes_out"] = counts.get("bytes_out")
    return rows


def _ordered_steps(
    by_reason: Mapping[str, Mapping[str, int]], step_order: Sequence[str]
) -> list[tuple[str, dict[str, int]]]:
    """(step, reasons) in pipeline order; steps not in the order go before dedup."""
    known = [*FIRST_STEPS, *step_order]
    names = known + sorted(set(by_reason) - {*known, "dedup"}) + ["dedup"]
    return [(name, dict(by_reason.get(name, {}))) for name in names
            if by_reason.get(name) or name in ("read", "extract", "language", "dedup")]  # fmt: skip


def removal_funnel(counts: Mapping[str, Any], path: Path, **kwargs: Any) -> Path:
    """Documents (left) and, where recorded, megabytes (right) leaving each step."""
    rows = funnel_rows(counts, **kwargs)
    labels = ["input"] + [r["step"] for r in rows]
    first_in = rows[0]["docs_in"] if rows else int(counts["responses"])
    docs = [first_in] + [r["docs_out"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.35 * len(labels) + 1.5), sharey=True)
    left.barh(labels, docs, color="#4c72b0")
    for y, value in enumerate(docs):
        left.text(value, y, f" {value}", va="center", fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("documents remaining")
    left.set_title("Data funnel: documents")
    megabytes = [rows[0]["bytes_in"] if rows else None] + [r["bytes_out"] for r in rows]
    known = [(y, b / 1e6) for y, b in enumerate(megabytes) if b is not None]
    if known:
        right.barh([labels[y] for y, _ in known], [mb for _, mb in known], color="#dd8452")
        for y, mb in known:
            right.text(mb, y, f" {mb:,.1f}", va="center", fontsize=8)
    right.set_xlabel("MB remaining (HTML payload in, UTF-8 text after extraction)")
    right.set_title("Data funnel: bytes")
    return _save(fig, path)


def language_histogram(languages: Mapping[str, int], path: Path, top: int = 25) -> Path:
    items = sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([k for k, _ in items], [v for _, v in items], color="#55a868")
    ax.set_ylabel("documents kept")
    ax.set_title("Languages")
    ax.tick_params(axis="x", rotation=45)
    return _save(fig, path)


def training_curves(history: Sequence[Mapping[str, float]], path: Path) -> Path:
    """`history`: records with `step` and any of `loss`, `val_loss`."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("val_loss", "o-")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), style, label=key, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Training")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion_matrix(
    matrix: Sequence[Sequence[int]],
    labels: Sequence[str],
    path: Path,
    title: str = "Confusion matrix",
) -> Path:
    """`matrix[i][j]`: examples of true class i predicted as j; each cell shows its count."""
    size = max(3.5, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            # Dark cells get white text so the count stays readable.
            color = "white" if peak and count > peak / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def ablation_curves(
    curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]], path: Path, metric: str
) -> Path:
    """`curves`: variant -> one curve per seed, points with `tokens` and `metric`. A line per
    variant through the seeds' mean at each point, in a band from their min to their max."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for variant, seeds in curves.items():
        by_tokens: dict[float, list[float]] = {}
        for curve in seeds:
            for point in curve:
                by_tokens.setdefault(point["tokens"], []).append(point[metric])
        tokens = sorted(by_tokens)
        if not tokens:
            continue
        values = [by_tokens[t] for t in tokens]
        (line,) = ax.plot(tokens, [sum(v) / len(v) for v in values], "o-", markersize=3,
                          label=variant)  # fmt: skip
        ax.fill_between(tokens, [min(v) for v in values], [max(v) for v in values],
                        color=line.get_color(), alpha=0.2)  # fmt: skip
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"held-out {metric}")
    ax.set_title("Held-out score by variant (mean over seeds, min-max band)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def ablation_scores(
    scores: Mapping[str, Mapping[str, tuple[float, float | None]]], path: Path
) -> Path:
    """`scores`: metric -> variant -> (value, standard error or None): a panel per metric, a
    bar per variant with its ±1 SE error bar."""
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores) + 1, 3.8), squeeze=False)
    for ax, (metric, values) in zip(axes[0], scores.items(), strict=True):
        names = list(values)
        errors = [values[name][1] or 0.0 for name in names]
        ax.bar(names, [values[name][0] for name in names], yerr=errors, capsize=4,
               color="#4c72b0")  # fmt: skip
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
