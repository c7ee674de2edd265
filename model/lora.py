"""Low-rank adaptation (LoRA, Hu et al. 2021) of `nn.Linear` layers, applied from outside the model.

A frozen weight W [out, in] gets a trainable update scaled by alpha / rank:

    y = x Wᵀ + (alpha / rank) · dropout(x) Aᵀ Bᵀ,   A [rank, in] random, B [out, rank] zero

so training starts exactly at the base model, and only rank · (in + out) numbers per layer learn.
`merge_lora` folds the update into W (W + (alpha / rank) · B A) and restores plain `nn.Linear`
layers, so a merged model has the base model's parameter names and saves with `save_model`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# Attention projections, as in the LoRA paper; the MLP's `gate_up`/`up`/`down` are one name away.
DEFAULT_TARGETS = ("qkv", "out_proj")


@dataclass(frozen=True)
class LoRAConfig:
    """rank: width of the update; alpha: its scale is alpha / rank; dropout: on the adapter's
    input only; targets: module names (or dotted suffixes like `attn.qkv`) of the layers to adapt.
    Raises ValueError on construction for values that cannot work."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))  # JSON and pydantic give lists
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target module name")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update; see the module docstring."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        weight = base.weight
        self.lora_a = nn.Parameter(
            torch.empty(rank, base.in_features, dtype=weight.dtype, device=weight.device)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device)
        )
        # A as nn.Linear's default init, B zero: the update starts at exactly zero.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha / rank) · B A, shaped like the base weight."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.dropout(x) @ self.lora_a.T @ self.lora_b.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (forward then costs one matmul)."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight, so the adapter trains on again."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == target or name.endswith("." + target) for target in targets)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Wrap every `nn.Linear` whose name matches `config.targets` in a `LoRALinear`, in place,
    and freeze every other parameter: afterwards only adapter weights train.

    Returns the names of the adapted layers. Raises ValueError when no layer matches, when the
    model already has adapters, or when a target's weight is shared with another module (a head
    tied to the embeddings: merging would silently change the embeddings too).
    """
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        raise ValueError("the model already has LoRA adapters: merge_lora it first")
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _matches(name, config.targets)
    ]
    if not chosen:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"no nn.Linear matches the LoRA targets {list(config.targets)}; "
            f"this model's linear layers are named {linear}"
        )
    for name, module in chosen:
        sharing = [
            other
            for other, m in model.named_modules()
            if other != name and getattr(m, "weight", None) is module.weight
        ]
        if sharing:
            raise ValueError(
                f"cannot adapt {name}: its weight is shared with {sharing[0]} (tied embeddings); "
                "leave it out of the LoRA targets"
            )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, config.rank, config.alpha, config.dropout))
    return [name for name, _ in chosen]


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (`<layer>.lora_a`, `<layer>.lora_b`), without the base model."""
    return {
        f"{name}.{part}": getattr(layer, part).detach().clone()
        for name, layer in lora_layers(model)
        for part in ("lora_a", "lora_b")
    }


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain `nn.Linear` back, in place.

    The result has exactly the parameter names of the model before `apply_lora` (so
    `save_model`/`load_model` work on it). Parameters are left trainable, as in a fresh model.
    """
    for name, layer in list(lora_layers(model)):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model

