"""Sequence classification with a pretrained GPT: a linear head on the last real token.

In a causal model only the last position has attended to the whole text, so its hidden state is
the sequence's summary; batches are right-padded with `pad_id`, and padding after the last real
token cannot change it. Saved as a model directory (the fine-tuned GPT, loadable by `load_model`)
plus `classifier_head.safetensors` and `classifier.json` (labels, pad id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from lmforge.model.checkpoint import load_model, save_model
from lmforge.model.gpt import GPT

HEAD_FILE = "classifier_head.safetensors"
CLASSIFIER_FILE = "classifier.json"


class SequenceClassifier(nn.Module):
    """`forward(idx [B, T]) -> logits [B, num_classes]` from the hidden state of each row's last
    non-pad token. Rows must be right-padded and hold at least one real token."""

    def __init__(self, base: GPT, num_classes: int, pad_id: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.base = base
        self.pad_id = pad_id
        self.head = nn.Linear(base.config.d_model, num_classes)
        nn.init.normal_(self.head.weight, mean=0.0, std=base.config.init_std)
        nn.init.zeros_(self.head.bias)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        hidden = self.base.hidden_states(idx)  # [B, T, d_model]
        positions = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)
        # Index of the last real token per row (no data-dependent branch: the graph exports).
        last = torch.where(idx != self.pad_id, positions, -1).amax(dim=1).clamp(min=0)
        pooled = hidden[torch.arange(idx.shape[0], device=idx.device), last]
        return self.head(pooled)

    def freeze_all_but_last(self, blocks: int | None) -> int:
        """Train only the head, the final norm and the last `blocks` transformer blocks
        (None: train everything). Returns the number of trainable parameters."""
        n_layer = len(self.base.blocks)
        if blocks is not None and not 0 <= blocks <= n_layer:
            raise ValueError(f"trainable blocks must be between 0 and {n_layer}, got {blocks}")
        for parameter in self.parameters():
            parameter.requires_grad_(blocks is None)
        if blocks is not None:
            trainable = [self.head, self.base.norm, *self.base.blocks[n_layer - blocks :]]
            for module in trainable:
                for parameter in module.parameters():
                    parameter.requires_grad_(True)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def save_classifier(
    classifier: SequenceClassifier, directory: str | Path, labels: list[str]
) -> None:
    """Write the fine-tuned GPT (`model.safetensors`, `model_config.json`), the head and
    `classifier.json` into `directory`."""
    if len(labels) != classifier.num_classes:
        raise ValueError(f"{len(labels)} labels for a {classifier.num_classes}-class head")
    directory = Path(directory)
    save_model(classifier.base, directory)
    safetensors.torch.save_model(classifier.head, str(directory / HEAD_FILE))
    meta: dict[str, Any] = {"labels": list(labels), "pad_id": classifier.pad_id}
    (directory / CLASSIFIER_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_classifier(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[SequenceClassifier, list[str]]:
    """The classifier saved by `save_classifier` (in eval mode) and its label names, by index."""
    directory = Path(directory)
    meta_path = directory / CLASSIFIER_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {CLASSIFIER_FILE}: it is not a saved classifier"
        )
    meta = json.loads(meta_path.read_text())
    base = load_model(directory, device=device)
    classifier = SequenceClassifier(base, len(meta["labels"]), meta["pad_id"]).to(device)
    safetensors.torch.load_model(classifier.head, str(directory / HEAD_FILE), device=str(device))
    return classifier.eval(), list(meta["labels"])
