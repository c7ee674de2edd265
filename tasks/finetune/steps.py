"""Pieces both fine-tuning loops share: metric recording and one optimizer step."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lmforge.model.runtime import LogCallback


class MetricsHistory:
    """Records every `(step, metrics)` for the result and forwards it to `on_log` if given."""

    def __init__(self, on_log: LogCallback | None = None) -> None:
        self.on_log = on_log
        self.records: list[dict[str, float]] = []

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.records.append({"step": step, **metrics})
        if self.on_log is not None:
            self.on_log(step, metrics)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    lr: float,
    parameters: Iterable[torch.nn.Parameter],
    grad_clip: float,
) -> None:
    """Backpropagate `loss`, clip the gradients of `parameters` (0: no clipping), and step at `lr`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
