"""Pretraining launch: runs the training loop of `lmforge.model.train` for the orchestration layer.

One process on the local device today; the same entry point is where a `torchrun` launch for
several processes plugs in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lmforge.model.train import TrainConfig, TrainResult, train


def run_pretraining(
    config: TrainConfig, on_log: Callable[[int, Mapping[str, float]], None] | None = None
) -> TrainResult:
    """Train per `config`; `on_log(step, metrics)` receives metrics as they are produced."""
    return train(config, on_log=on_log)
