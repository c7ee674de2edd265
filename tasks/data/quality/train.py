"""Train a quality classifier: positives (curated reference text) against negatives (random web
text), as DCLM's and FineWeb-Edu's filters are trained, and score it on held-out documents.

    read every source -> normalize, drop repeats -> sample each class -> split by text hash
    -> write fastText's training file -> train in a subprocess -> score the held-out documents

Documents are identified by the hash of their normalized text: a repeated document counts once,
and the train/held-out split is a pure function of the text (a document never moves between
the splits when others are added). Sampling and the training order follow `seed`.

Training runs `fasttext_trainer` in a subprocess with the full fastText build of `trainer_dir()`
first on its path (this process keeps the predict-only build that language ID uses; both install
the module `fasttext`); the held-out documents are scored here with `QualityClassifier`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmforge.errors import LmforgeError, one_line
from lmforge.manifest import stage_output
from lmforge.tasks.data.quality.classifier import (
    NEGATIVE_LABEL,
    POSITIVE_LABEL,
    QualityClassifier,
    normalize_text,
)
from lmforge.tasks.data.quality.fasttext_trainer import CANNOT_TRAIN
from lmforge.tasks.data.quality.sources import read_sources

log = logging.getLogger(__name__)

STAGE = "quality_classifier"
MODEL_FILE = "model.bin"
METRICS_FILE = "metrics.json"
CLASS_LABELS = {"positive": POSITIVE_LABEL, "negative": NEGATIVE_LABEL}
TRAINER_ENV = "LMFORGE_FASTTEXT_TRAINER"
TRAINER_DIR_NAME = "fasttext-trainer"
# The Makefile's FASTTEXT_TRAINER: what `make install` puts in <venv>/fasttext-trainer.
TRAINER_REQUIREMENT = "fasttext-numpy2==0.10.4"
_TRAINER_MODULE = "lmforge.tasks.data.quality.fasttext_trainer"


class QualityTrainError(LmforgeError, ValueError):
    """The sources leave a class too few documents to train on and to hold some out."""


class FastTextTrainerError(LmforgeError, RuntimeError):
    """No fastText build that can train is installed where lmforge looks, or training failed."""


class FastTextParams(BaseModel):
    """fastText's supervised training settings (fastText's own names in brackets). The defaults
    train in seconds on a few thousand documents and keep the model near 10 MB."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # fastText's own lr 0.1 and 5 epochs suit millions of documents; on a few thousand they
    # leave every score near 0.5. Higher rates can diverge (NaN), more so with word_ngrams 1.
    lr: float = Field(0.3, gt=0.0, description="Learning rate [lr].")
    epoch: int = Field(10, ge=1, description="Passes over the training file [epoch].")
    word_ngrams: int = Field(
        2, ge=1, description="Longest word n-gram used as a feature [wordNgrams]."
    )
    dim: int = Field(32, ge=1, description="Size of the word vectors [dim].")
    min_count: int = Field(
        1, ge=1, description="Words seen fewer times are left out of the vocabulary [minCount]."
    )
    minn: int = Field(0, ge=0, description="Shortest character n-gram; 0: none [minn].")
    maxn: int = Field(0, ge=0, description="Longest character n-gram; 0: none [maxn].")
    bucket: int = Field(
        100_000,
        ge=1,
        description="Hash buckets shared by the word and character n-grams; the model holds "
        "bucket x dim floats [bucket].",
    )
    loss: Literal["softmax", "hs", "ova"] = Field(
        "softmax", description="Loss: softmax, hierarchical softmax or one-vs-all [loss]."
    )
    thread: int = Field(
        1, ge=1, description="Training threads; 1 gives the same model for the same seed [thread]."
    )

    @model_validator(mode="after")
    def _check_char_ngrams(self) -> FastTextParams:
        if self.maxn < self.minn:
            raise ValueError(f"maxn={self.maxn} must be at least minn={self.minn}")
        return self

    def train_supervised_kwargs(self, seed: int) -> dict[str, Any]:
        """The keyword arguments of `fasttext.train_supervised` (input aside)."""
        return {
            "lr": self.lr,
            "epoch": self.epoch,
            "wordNgrams": self.word_ngrams,
            "dim": self.dim,
            "minCount": self.min_count,
            "minn": self.minn,
            "maxn": self.maxn,
            "bucket": self.bucket,
            "loss": self.loss,
            "thread": self.thread,
            "seed": seed,
            "verbose": 0,
        }


class QualityTrainConfig(BaseModel):
    """How the quality classifier is trained: how many documents each class gives, the
    held-out split, the decision threshold and fastText's settings. Invalid values raise
    ValidationError (a ValueError) naming the field, before any work."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_docs_per_class: int | None = Field(
        None, ge=2, description="Use at most this many documents of each class; empty: all."
    )
    # Unbalanced by default: the score then keeps the classes' real proportions, so the step's
    # default threshold (0.5) means "more likely junk than not". Balanced on webdocs (3,225
    # positives, 245 negatives), a 0.5 threshold dropped 41% of doc pages; unbalanced 0.1%,
    # with every junk page still below it (bench/quality_classifier.py).
    balance: bool = Field(
        False, description="Sample the larger class down to the size of the smaller one."
    )
    heldout_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="Share of the documents held out to measure the model."
    )
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0,
        description="Positive-class probability from which a document counts as positive "
        "(precision, recall, F1).",
    )  # fmt: skip
    # fastText keeps its seed in a C int.
    seed: int = Field(
        0, ge=0, lt=2**31, description="Seed of the sample, the training order and fastText."
    )
    fasttext: FastTextParams = Field(FastTextParams(), description="fastText's training settings.")


@dataclass(frozen=True)
class HeldoutMetrics:
    """The model on the held-out documents: ROC AUC, and precision, recall and F1 of the
    positive class at `threshold`."""

    auc: float
    precision: float
    recall: float
    f1: float
    accuracy: float
    threshold: float
    positives: int
    negatives: int


@dataclass
class QualityTrainResult:
    out_dir: Path
    metrics: HeldoutMetrics
    counts: dict[str, dict[str, int]]  # class -> documents, empty, duplicates, used, train, heldout
    heldout_labels: np.ndarray  # True: positive
    heldout_scores: np.ndarray
    seconds: float


@dataclass
class ClassDocuments:
    """One class's normalized texts by document hash, and what reading them counted."""

    texts: dict[bytes, str]
    counts: dict[str, int]


# --- the trainer subprocess --------------------------------------------------------------------


def trainer_dir() -> Path:
    """The folder holding the fastText build that trains: `$LMFORGE_FASTTEXT_TRAINER`, else
    `<sys.prefix>/fasttext-trainer` (what `make install` fills). FastTextTrainerError saying how
    to install it when it holds no `fasttext` package."""
    configured = os.environ.get(TRAINER_ENV)
    path = Path(sys.prefix) / TRAINER_DIR_NAME
    if configured:
        path = Path(configured).expanduser().resolve()  # the subprocess runs inside it
    if not (path / "fasttext" / "__init__.py").is_file():
        where = f"{path} (${TRAINER_ENV})" if configured else str(path)
        raise FastTextTrainerError(
            f"no fastText build that can train in {where}: run `make install`, or "
            f"`{sys.executable} -m pip install --no-deps --target {path} {TRAINER_REQUIREMENT}`"
        )
    return path


def run_fasttext_trainer(train_file: Path, model_file: Path, kwargs: Mapping[str, Any]) -> None:
    """Train on `train_file` (one `__label__X text` line per document) in a subprocess with
    `trainer_dir()` first on its path, saving the model to `model_file`. FastTextTrainerError
    when the trainer is missing, cannot train, or fails."""
    trainer = trainer_dir()
    path = [str(trainer), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    command = [sys.executable, "-m", _TRAINER_MODULE, str(train_file.resolve()),
               str(model_file.resolve()), json.dumps(dict(kwargs))]  # fmt: skip
    # `-m` puts the working directory first on sys.path: the trainer's, so no `fasttext`
    # folder where the command was started can stand in for it.
    done = subprocess.run(
        command, env=env, cwd=trainer, capture_output=True, text=True, check=False
    )
    message = one_line(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", 300)
    if done.returncode == CANNOT_TRAIN:
        raise FastTextTrainerError(
            f"the fastText build in {trainer} cannot train ({message}): reinstall it with "
            f"`{sys.executable} -m pip install --upgrade --no-deps --target {trainer} "
            f"{TRAINER_REQUIREMENT}`"
        )
    if done.returncode != 0 or not model_file.is_file():
        hint = ": it diverged; lower quality.fasttext.lr" if "NaN" in message else ""
        raise FastTextTrainerError(
            f"fastText training failed ({message or 'no message'}, exit status "
            f"{done.returncode}){hint}"
        )


# --- documents, sample, split ------------------------------------------------------------------


def document_hash(text: str) -> bytes:
    """The identity of a normalized text: repeats collapse, and the split follows from it."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def is_heldout(digest: bytes, fraction: float) -> bool:
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def order_key(digest: bytes, seed: int) -> bytes:
    """A document's place in the seeded shuffle (sample, then training order)."""
    salt = seed.to_bytes(16, "big")
    return hashlib.blake2b(digest, digest_size=8, person=b"lmforge/quality", salt=salt).digest()


def read_class(sources: Sequence[str | Path]) -> ClassDocuments:
    """The normalized texts of a class's sources by hash; errors as `sources.read_sources`."""
    read = read_sources(sources)
    texts: dict[bytes, str] = {}
    documents = empty = 0
    for source in read:
        empty += source.empty
        for text in source.texts:
            line = normalize_text(text)
            if not line:  # whitespace only
                empty += 1
                continue
            documents += 1
            texts.setdefault(document_hash(line), line)
    counts = {"sources": len(read), "documents": documents, "empty": empty,
              "duplicates": documents - len(texts)}  # fmt: skip
    return ClassDocuments(texts, counts)


def sample_and_split(
    classes: Mapping[str, ClassDocuments], config: QualityTrainConfig
) -> dict[str, dict[str, list[bytes]]]:
    """Class -> {"train": hashes, "heldout": hashes}: each class sampled to its cap (the seeded
    shuffle's first documents), then split by hash. Fills each class's `used`, `train` and
    `heldout` counts; QualityTrainError naming the class when a split would be empty."""
    cap = config.max_docs_per_class
    if config.balance:
        smallest = min(len(documents.texts) for documents in classes.values())
        cap = smallest if cap is None else min(cap, smallest)
    splits: dict[str, dict[str, list[bytes]]] = {}
    for name, documents in classes.items():
        ordered = sorted(documents.texts, key=lambda digest: order_key(digest, config.seed))
        used = ordered[:cap] if cap is not None else ordered
        heldout = [d for d in used if is_heldout(d, config.heldout_fraction)]
        train = [d for d in used if not is_heldout(d, config.heldout_fraction)]
        documents.counts.update(used=len(used), train=len(train), heldout=len(heldout))
        if not train or not heldout:
            raise QualityTrainError(
                f"the {name} class has {len(used)} distinct documents: {len(train)} to train on "
                f"and {len(heldout)} held out (heldout_fraction={config.heldout_fraction}); "
                "both need some: give more documents or change heldout_fraction"
            )
        splits[name] = {"train": train, "heldout": heldout}
    return splits


def write_training_file(
    path: Path,
    classes: Mapping[str, ClassDocuments],
    splits: Mapping[str, Mapping[str, list[bytes]]],
    seed: int,
) -> int:
    """fastText's training file: `<label> <text>` per training document, the classes mixed in
    the seeded order (fastText learns in file order); returns the number of lines."""
    lines = [
        (order_key(digest, seed), CLASS_LABELS[name], classes[name].texts[digest])
        for name, split in splits.items()
        for digest in split["train"]
    ]
    lines.sort()
    with open(path, "w", encoding="utf-8") as handle:
        for _, label, text in lines:
            handle.write(f"{label} {text}\n")
    return len(lines)


# --- held-out metrics --------------------------------------------------------------------------


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) from (0, 0) to (1, 1), one point per distinct
    score taken as threshold, highest first; `labels` True for positives. ValueError unless both
    classes occur."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        raise ValueError("a ROC curve needs positive and negative examples")
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_labels = scores[order], labels[order]
    # Tied scores pass a threshold together: one point at the last of each run of ties.
    ends = np.r_[np.flatnonzero(np.diff(ranked_scores)), len(ranked_scores) - 1]
    true_positives = np.cumsum(ranked_labels)[ends]
    false_positives = ends + 1 - true_positives
    return np.r_[0.0, false_positives / negatives], np.r_[0.0, true_positives / positives]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under `roc_curve` (trapezoids: a tie between a positive and a negative counts half),
    i.e. the chance that a random positive outscores a random negative."""
    fpr, tpr = roc_curve(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def heldout_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> HeldoutMetrics:
    """ROC AUC, and precision, recall, F1 and accuracy of `scores >= threshold` (precision is
    0.0 when nothing reaches the threshold)."""
    labels = np.asarray(labels, dtype=bool)
    predicted = np.asarray(scores) >= threshold
    true_positives = int((predicted & labels).sum())
    precision = true_positives / int(predicted.sum()) if predicted.any() else 0.0
    recall = true_positives / int(labels.sum()) if labels.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return HeldoutMetrics(
        auc=roc_auc(labels, scores),
        precision=precision,
        recall=recall,
        f1=f1,
        accuracy=float((predicted == labels).mean()),
        threshold=threshold,
        positives=int(labels.sum()),
        negatives=int((~labels).sum()),
    )


def write_roc_plot(labels: np.ndarray, scores: np.ndarray, threshold: float, path: Path) -> Path:
    """A PNG with the held-out ROC curve (its AUC in the title) and the score histogram of
    each class (the threshold marked)."""
    from lmforge.tasks.plots import plt  # headless matplotlib, loaded only to plot

    labels = np.asarray(labels, dtype=bool)
    fpr, tpr = roc_curve(labels, scores)
    fig, (roc, histogram) = plt.subplots(1, 2, figsize=(9, 3.8))
    roc.plot(fpr, tpr, color="tab:blue")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate",
            title=f"Held-out ROC (AUC {roc_auc(labels, scores):.3f})")  # fmt: skip
    bins = np.linspace(0.0, 1.0, 21)
    histogram.hist(scores[labels], bins=bins, alpha=0.6, label="positive", color="tab:green")
    histogram.hist(scores[~labels], bins=bins, alpha=0.6, label="negative", color="tab:red")
    histogram.axvline(threshold, color="black", linestyle="--", linewidth=1)
    histogram.set(xlabel="positive-class probability", ylabel="documents", title="Scores")
    histogram.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the stage ---------------------------------------------------------------------------------


def train_quality_classifier(
    positive: Sequence[str | Path],
    negative: Sequence[str | Path],
    out_dir: str | Path,
    config: QualityTrainConfig = QualityTrainConfig(),
) -> QualityTrainResult:
    """Train a fastText quality classifier on `positive` and `negative` sources and write
    `out_dir` atomically: `model.bin`, `metrics.json` (held-out metrics and counts) and the
    manifest. Every source is read before training: QualitySourceError (or ManifestError)
    names a bad one, QualityTrainError a class too small to split, FastTextTrainerError a
    missing trainer (checked first) or a failed training; OutputRefused a bad `out_dir`."""
    started = time.perf_counter()
    trainer_dir()
    classes = {"positive": read_class(positive), "negative": read_class(negative)}
    splits = sample_and_split(classes, config)
    counts = {name: documents.counts for name, documents in classes.items()}
    log.info("quality classifier documents: %s", counts)
    kwargs = config.fasttext.train_supervised_kwargs(config.seed)
    inputs = [*positive, *negative]
    with stage_output(out_dir, STAGE, config.model_dump(mode="json"), inputs=inputs) as writer:
        train_file = writer.path / ".train.txt"  # removed before the manifest lists outputs
        try:
            lines = write_training_file(train_file, classes, splits, config.seed)
            log.info("training fastText on %d documents", lines)
            run_fasttext_trainer(train_file, writer.path / MODEL_FILE, kwargs)
        finally:
            train_file.unlink(missing_ok=True)
        classifier = QualityClassifier.load(writer.path / MODEL_FILE)
        heldout = [(name == "positive", classes[name].texts[digest])
                   for name, split in splits.items() for digest in split["heldout"]]  # fmt: skip
        labels = np.array([label for label, _ in heldout], dtype=bool)
        scores = classifier.score_many(text for _, text in heldout)
        metrics = heldout_metrics(labels, scores, config.threshold)
        summary = {"heldout": asdict(metrics), "counts": counts, "labels": CLASS_LABELS,
                   "fasttext": kwargs}  # fmt: skip
        (writer.path / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        writer.counts.update(counts)
        writer.extra.update({"heldout": asdict(metrics), "labels": CLASS_LABELS})
    log.info("quality classifier held out: %s", asdict(metrics))
    return QualityTrainResult(
        out_dir=Path(out_dir).resolve(),
        metrics=metrics,
        counts=counts,
        heldout_labels=labels,
        heldout_scores=scores,
        seconds=time.perf_counter() - started,
    )
