"""Fine-tune a pretrained GPT as a text classifier:
`finetune_classifier(base_model, data, out_dir, ClassifierConfig(...))`.

Examples come from a labelled CSV/JSONL file, or from a data-stage directory (`DATA/docs/*.parquet`)
with labels derived from each document's URL:

- `section`: the directory the page sits in (`https://docs.example.org/3/library/io.html` ->
  `library`). On the built-in sample this tells language-reference topics from library module
  pages, on every host (mirrors use other paths, but the same section names);
- `site`: the host the page came from (the `source` column), e.g. per documentation project.

A stratified share of each class is held out; the result reports accuracy and macro-F1 on it next
to the majority-class baseline, and the output directory (written atomically, with a manifest)
holds the classifier, its labels, metrics.json and confusion_matrix.png.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from lmforge.tasks.data.dataset_versions import read_documents

from lmforge.manifest import claim_output_dir, read_manifest, stage_output
from lmforge.model.checkpoint import load_model
from lmforge.model.classifier import SequenceClassifier, save_classifier
from lmforge.model.runtime import LogCallback, autocast_context, build_optimizer, resolve_device
from lmforge.model.schedule import LRSchedule
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.tasks import plots
from lmforge.tasks.finetune.data import FinetuneDataError, LabelledText, load_labelled_texts
from lmforge.tasks.finetune.steps import MetricsHistory, optimizer_step
from lmforge.tasks.tokens.tokenizer import load_tokenizer, special_token_ids, tokenizer_vocab_size

LabelSource = Literal["section", "site"]


class ClassifierConfig(BaseModel):
    """How a pretrained model is fine-tuned into a text classifier: where labels come from, how
    texts are cut, the optimisation, which blocks train and the held-out split. Classes with
    fewer than min_class_examples are left out (reported in the counts). Invalid values raise
    ValidationError (a ValueError) naming the field, before any work.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    label_from: LabelSource = Field(
        "section",
        description="For a data-stage directory: label by the URL's section (the page's "
        "directory, e.g. reference/library) or by site (the host).",
    )
    text_field: str = Field(
        "text", min_length=1, description="Text column/field of a labelled file."
    )
    label_field: str = Field(
        "label", min_length=1, description="Label column/field of a labelled file."
    )
    max_len: int | None = Field(
        256, ge=2, description="Tokens per text (the start is kept); empty: the model's context."
    )
    epochs: int = Field(3, ge=1, description="Passes over the training split.")
    batch_size: int = Field(16, ge=1, description="Texts per optimizer step.")
    lr: float = Field(5e-4, gt=0.0, description="Peak learning rate (warmup, then cosine decay).")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay (2-D weights only).")
    warmup_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the steps spent warming the learning rate up."
    )
    grad_clip: float = Field(1.0, ge=0.0, description="Gradient norm clip; 0: no clipping.")
    trainable_blocks: int | None = Field(
        None, ge=0,
        description="Train only the head, final norm and the last N blocks; empty: all.",
    )  # fmt: skip
    val_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of every class held out for accuracy and macro-F1."
    )
    min_class_examples: int = Field(
        2, ge=2, description="Classes with fewer examples are left out (one to train, one to test)."
    )
    seed: int = Field(
        0, ge=0, description="Seed of the split, the head's init and the batch order."
    )
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    log_every: int = Field(5, ge=1, description="Training loss every N steps (and at the end).")


@dataclass
class ClassifierResult:
    """Held-out scores of the fine-tuned classifier; `history` holds the logged metrics."""

    out_dir: Path
    labels: list[str]
    accuracy: float
    macro_f1: float
    majority_accuracy: float
    val_loss: float
    confusion: list[list[int]]
    per_class_f1: dict[str, float]
    train_examples: int
    val_examples: int
    steps: int
    trainable_parameters: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "majority_accuracy": self.majority_accuracy,
            "val_loss": self.val_loss,
        }


# --- examples ------------------------------------------------------------------------------------


def url_section(url: str) -> str | None:
    """The directory a page sits in: `/3/library/io.html` -> `library`; None at the site root."""
    parts = [part for part in urlsplit(url).path.split("/") if part]
    return parts[-2] if len(parts) >= 2 else None


def documents_with_labels(data_dir: str | Path, label_from: LabelSource) -> list[LabelledText]:
    """Texts of a data-stage output with labels derived from their URLs (see the module doc);
    documents whose URL gives no label are left out."""
    docs = Path(data_dir) / "docs"
    if not docs.is_dir():
        raise FinetuneDataError(f"{data_dir} has no docs/ directory: it is not a data-stage output")
    table = read_documents(data_dir, ["url", "text", "source"])  # committed versions only
    examples = []
    for url, text, source in zip(*(table.column(c).to_pylist() for c in ("url", "text", "source"))):
        label = url_section(url) if label_from == "section" else source
        if label and text:
            examples.append(LabelledText(text, label))
    if not examples:
        raise FinetuneDataError(f"no document in {docs} has a {label_from} label")
    return examples


def load_examples(data: str | Path, config: ClassifierConfig) -> list[LabelledText]:
    data = Path(data)
    if data.is_dir():
        return documents_with_labels(data, config.label_from)
    return load_labelled_texts(data, config.text_field, config.label_field)


def stratified_split(
    examples: Sequence[LabelledText], val_fraction: float, seed: int
) -> tuple[list[LabelledText], list[LabelledText]]:
    """Hold out `val_fraction` of every class (at least one example each, and at least one left
    to train on), shuffled reproducibly by `seed`."""
    by_label: dict[str, list[LabelledText]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        held = min(len(group) - 1, max(1, round(val_fraction * len(group))))
        val += group[:held]
        train += group[held:]
    rng.shuffle(train)
    return train, val


def classification_metrics(
    true: Sequence[int], predicted: Sequence[int], num_classes: int
) -> tuple[float, float, list[list[int]], list[float]]:
    """Accuracy, macro-F1 (unweighted mean over all classes), the confusion matrix
    (`[true][predicted]` counts) and each class's F1."""
    confusion = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(true, predicted):
        confusion[t][p] += 1
    f1 = []
    for c in range(num_classes):
        hits = confusion[c][c]
        predicted_c = sum(row[c] for row in confusion)
        actual_c = sum(confusion[c])
        f1.append(2 * hits / (predicted_c + actual_c) if predicted_c + actual_c else 0.0)
    accuracy = sum(confusion[c][c] for c in range(num_classes)) / max(1, len(true))
    return accuracy, sum(f1) / num_classes, confusion, f1


# --- training ------------------------------------------------------------------------------------


def encode_texts(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """The first max_len - 1 tokens of each text, then `<|endoftext|>`: the head reads the
    position where pretraining saw every document end."""
    eot_id = special_token_ids(tokenizer).eot_id
    return [enc.ids[: max_len - 1] + [eot_id] for enc in tokenizer.encode_batch_fast(list(texts))]


def batch_tensor(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    width = max(len(row) for row in rows)
    padded = [list(row) + [pad_id] * (width - len(row)) for row in rows]
    return torch.tensor(padded, dtype=torch.long, device=device)


@torch.no_grad()
def predict(
    classifier: SequenceClassifier,
    rows: Sequence[Sequence[int]],
    targets: Sequence[int],
    batch_size: int,
    device: torch.device,
    autocast,
) -> tuple[list[int], float]:
    """Predicted class of each row and the mean cross-entropy against `targets`."""
    classifier.eval()
    predicted, loss_sum = [], 0.0
    for first in range(0, len(rows), batch_size):
        x = batch_tensor(rows[first : first + batch_size], classifier.pad_id, device)
        y = torch.tensor(targets[first : first + batch_size], device=device)
        with autocast:
            logits = classifier(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        predicted += logits.argmax(dim=-1).tolist()
    classifier.train()
    return predicted, loss_sum / max(1, len(rows))


STAGE = "finetune_classifier"


def finetune_classifier(
    base_model: str | Path,
    data: str | Path,
    out_dir: str | Path,
    config: ClassifierConfig = ClassifierConfig(),
    on_log: LogCallback | None = None,
) -> ClassifierResult:
    """Train a classification head (and the chosen blocks) of the training output `base_model`
    on `data` (a CSV/JSONL file with `config.text_field` and `config.label_field`, or a
    data-stage directory labelled by `config.label_from`); write `out_dir`.

    on_log(step, metrics) gets {"loss", "lr"} every log_every steps and {"val_loss",
    "val_accuracy"} after every epoch. Raises FinetuneDataError for unusable data (fewer than
    two classes left, unreadable files), FileNotFoundError/ManifestError for a base model that
    is not a finished training output.
    """
    wall_start = time.perf_counter()
    log = MetricsHistory(on_log)
    # refused before any work unless out_dir may receive this stage's output, clear of the inputs
    claim_output_dir(out_dir, STAGE, [base_model, data])

    base_dir = Path(base_model)
    read_manifest(base_dir)  # a base model is a finished training output: fail early otherwise
    tokenizer = load_tokenizer(base_dir / TOKENIZER_FILE)
    pad_id = special_token_ids(tokenizer).pad_id
    examples = load_examples(data, config)
    counts = Counter(example.label for example in examples)
    rare = {label: n for label, n in counts.items() if n < config.min_class_examples}
    examples = [example for example in examples if example.label not in rare]
    labels = sorted({example.label for example in examples})
    if len(labels) < 2:
        raise FinetuneDataError(
            f"{data}: need at least two classes with {config.min_class_examples}+ examples; "
            f"found {dict(counts)}"
        )
    train_set, val_set = stratified_split(examples, config.val_fraction, config.seed)
    index = {label: i for i, label in enumerate(labels)}

    device = resolve_device(config.device)
    autocast = autocast_context(device, "auto")
    torch.manual_seed(config.seed)
    base = load_model(base_dir, device=device)
    if tokenizer_vocab_size(tokenizer) > base.config.vocab_size:
        raise FinetuneDataError(f"{base_dir}: tokenizer.json does not belong to the model")
    max_len = min(config.max_len or base.config.max_seq_len, base.config.max_seq_len)
    train_rows = encode_texts(tokenizer, [e.text for e in train_set], max_len)
    val_rows = encode_texts(tokenizer, [e.text for e in val_set], max_len)
    train_y = [index[e.label] for e in train_set]
    val_y = [index[e.label] for e in val_set]

    classifier = SequenceClassifier(base, len(labels), pad_id).to(device)
    trainable = classifier.freeze_all_but_last(config.trainable_blocks)
    classifier.train()
    optimizer = build_optimizer(classifier, config.lr, config.weight_decay, (0.9, 0.95), device)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total = steps_per_epoch * config.epochs
    schedule = LRSchedule(config.lr, config.lr / 10, int(config.warmup_fraction * total), total)
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    for _ in range(config.epochs):
        order = torch.randperm(len(train_rows), generator=generator).tolist()
        for first in range(0, len(order), config.batch_size):
            chosen = order[first : first + config.batch_size]
            x = batch_tensor([train_rows[i] for i in chosen], pad_id, device)
            y = torch.tensor([train_y[i] for i in chosen], device=device)
            lr = schedule(step)
            with autocast:
                logits = classifier(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer_step(optimizer, loss, lr, classifier.parameters(), config.grad_clip)
            step += 1
            if step % config.log_every == 0 or step == total:
                log(step, {"loss": loss.item(), "lr": lr})
        predicted, val_loss = predict(
            classifier, val_rows, val_y, config.batch_size, device, autocast
        )
        accuracy = sum(p == t for p, t in zip(predicted, val_y)) / len(val_y)
        log(step, {"val_loss": val_loss, "val_accuracy": accuracy})

    accuracy, macro_f1, confusion, f1 = classification_metrics(val_y, predicted, len(labels))
    majority = Counter(train_y).most_common(1)[0][0]  # the baseline learns only the train prior
    result = ClassifierResult(
        out_dir=Path(out_dir),
        labels=labels,
        accuracy=accuracy,
        macro_f1=macro_f1,
        majority_accuracy=sum(t == majority for t in val_y) / len(val_y),
        val_loss=val_loss,
        confusion=confusion,
        per_class_f1=dict(zip(labels, f1)),
        train_examples=len(train_set),
        val_examples=len(val_set),
        steps=step,
        trainable_parameters=trainable,
        seconds=0.0,
        history=log.records,
    )
    write_classifier_output(config, result, classifier, base_dir, Path(data), rare)
    result.seconds = time.perf_counter() - wall_start
    return result


def write_classifier_output(
    config: ClassifierConfig,
    result: ClassifierResult,
    classifier: SequenceClassifier,
    base_dir: Path,
    data: Path,
    rare: dict[str, int],
) -> None:
    """The stage directory: classifier, tokenizer, metrics.json, confusion_matrix.png, manifest."""
    metrics: dict[str, Any] = {
        **result.metrics(),
        "labels": result.labels,
        "confusion": result.confusion,
        "per_class_f1": result.per_class_f1,
    }
    paths = {"base_model": str(base_dir), "data": str(data), "out_dir": str(result.out_dir)}
    params = {**paths, **config.model_dump(mode="json")}
    with stage_output(result.out_dir, STAGE, params, inputs=[base_dir, data]) as stage:
        save_classifier(classifier, stage.path, result.labels)
        shutil.copyfile(base_dir / TOKENIZER_FILE, stage.path / TOKENIZER_FILE)
        (stage.path / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plots.confusion_matrix(result.confusion, result.labels, stage.path / "confusion_matrix.png")
        stage.counts.update(result.metrics())
        stage.counts.update(
            train_examples=result.train_examples,
            val_examples=result.val_examples,
            steps=result.steps,
            trainable_parameters=result.trainable_parameters,
        )
        stage.extra.update(labels=result.labels, classes_left_out=rare)
