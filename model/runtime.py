"""Where and how a model runs, for every loop that trains one (pretraining, fine-tuning): the
device, bf16 autocast, the random state a resumed run restores, the AdamW optimizer, the
callback each loop reports its metrics to, and when a stop signal ends the loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from lmforge.stopping import stop_signal

# Called with (step, metrics) each time a training loop logs: MLflow, a progress bar, a test.
LogCallback = Callable[[int, Mapping[str, float]], None]


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else must name a usable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} requested but CUDA is not available (use 'cpu' or 'auto')"
        )
    return device


def uses_bf16(device: torch.device, dtype: str) -> bool:
    """bf16 where asked for, or for "auto" on a GPU that has it; else float32."""
    return dtype == "bfloat16" or (
        dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast where asked for (or "auto" on a GPU that has it); else plain float32."""
    if uses_bf16(device, dtype):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global random state (CPU, and every GPU's when on CUDA), for `set_rng_state`."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (matmul weights, embeddings): decaying norm
    gains pulls them towards zero, which fights the normalisation instead of regularising."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused CUDA kernel updates every parameter in a few launches instead of one per tensor.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device.type == "cuda")


class StopVote:
    """Whether a training loop stops now: the stop signal (SIGINT/SIGTERM, see
    `lmforge.stopping`) any rank received, else None. Ranks vote with an all-reduce of one
    integer every step, so all stop after the same step (saving a checkpoint is collective);
    the vote travels over gloo on the CPU, beside NCCL, so it never waits for the GPU.
    Construct it on every rank at the same point: it may create a process group."""

    def __init__(self, distributed: bool) -> None:
        self.distributed = distributed
        self.group = None
        if distributed and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")

    def __call__(self) -> int | None:
        signum = stop_signal() or 0
        if self.distributed:
            vote = torch.tensor([signum], dtype=torch.int64)
            dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self.group)
            signum = int(vote.item())
        return signum or None
