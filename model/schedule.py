"""Learning rate as a pure function of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

ScheduleKind = Literal["cosine", "wsd"]


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup to `max_lr`, then a decay to `min_lr` by `total_steps`.

    kind "cosine": half a cosine from the end of warmup to total_steps.
    kind "wsd" (warmup-stable-decay): constant max_lr, then a linear decay over the last
    `decay_fraction` of the steps; a run can be extended from a checkpoint of its stable phase.
    Steps past total_steps stay at min_lr.
    """

    max_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    kind: ScheduleKind = "cosine"
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.min_lr <= self.max_lr:
            raise ValueError(
                f"need 0 <= min_lr <= max_lr, got min_lr={self.min_lr}, max_lr={self.max_lr}"
            )
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps <= total_steps, got warmup_steps={self.warmup_steps} "
                f"and total_steps={self.total_steps}"
            )
        if self.kind not in ("cosine", "wsd"):
            raise ValueError(f"schedule kind must be 'cosine' or 'wsd', got {self.kind!r}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")

    def __call__(self, step: int) -> float:
        """The learning rate for optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps  # step 0 already moves
        if step >= self.total_steps:
            return self.min_lr
        if self.kind == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            cosine = 0.5 * (1 + math.cos(math.pi * progress))  # 1 -> 0
            return self.min_lr + (self.max_lr - self.min_lr) * cosine
        decay_steps = max(1, round(self.decay_fraction * self.total_steps))
        decay_start = max(self.warmup_steps, self.total_steps - decay_steps)
        if step < decay_start:
            return self.max_lr
        progress = (step - decay_start) / max(1, self.total_steps - decay_start)
        return self.max_lr + (self.min_lr - self.max_lr) * progress

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
