"""Tiny stand-in language models for scoring tests: results computable by hand."""

from __future__ import annotations

import math

import torch
from torch import nn


class BigramModel(nn.Module):
    """A causal stand-in: the next token's logits depend on the current token only."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_id=None):
        for _ in range(max_new_tokens):
            logits = self.table[idx[:, -1]] / max(temperature, 1e-6)
            if top_k is not None:
                logits = logits.masked_fill(
                    logits < torch.topk(logits, top_k).values[:, -1:], -math.inf
                )
            next_token = torch.multinomial(logits.softmax(-1), 1)
            idx = torch.cat([idx, next_token], dim=1)
            if eos_id is not None and bool((next_token == eos_id).all()):
                break
        return idx
