"""Pictures that say more than tables: the data funnel, languages kept, training curves, a
classifier's confusion matrix."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

# The order records flow through the data stage; a funnel shows what each step removed.
FUNNEL_STAGES = ("read", "extract", "language", "quality", "dedup")


@contextlib.contextmanager
def figure_files() -> Iterator[Path]:
    """A temporary directory for figures that are logged elsewhere and then discarded."""
    with tempfile.TemporaryDirectory(prefix="lmforge-figures-") as tmp:
        yield Path(tmp)


def funnel_rows(counts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Documents left after each step of the data stage, from a data manifest's counts."""
    removed = counts.get("removed_by_stage", {})
    remaining = int(counts["responses"])
    rows = [{"step": "responses", "removed": 0, "remaining": remaining}]
    for stage in FUNNEL_STAGES:
        dropped = int(removed.get(stage, 0))
        remaining -= dropped
        rows.append({"step": stage, "removed": dropped, "remaining": remaining})
    return rows


def removal_funnel(counts: Mapping[str, Any], path: Path) -> Path:
    rows = funnel_rows(counts)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [r["step"] for r in rows]
    ax.barh(labels, [r["remaining"] for r in rows], color="#4c72b0")
    for y, row in enumerate(rows):
        ax.text(row["remaining"], y, f" {row['remaining']}", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("documents remaining")
    ax.set_title("Data funnel")
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


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
