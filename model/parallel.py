"""Parallelism applied to a plain `GPT` from outside: the model never knows how it is trained.

Small functions, applied in this order (as torchtitan does): activation checkpointing, then
`torch.compile` per block, then the wrapper of one training strategy (`lmforge.model.strategies`
decides which and drives it):

- DistributedDataParallel (`apply_ddp`): every rank holds the whole model, gradients are
  all-reduced.
- FSDP2 (`apply_fsdp`): `fully_shard` per block and on the root; parameters, gradients and
  optimizer state are sharded across ranks and gathered block by block for compute.
- Pipeline (`PipelineRunner`): each rank runs a contiguous slice of the blocks
  (`torch.distributed.pipelining`), micro-batches flow through the stages; for models whose
  layers do not fit one device.

Checkpoints stay in one format whatever the strategy: full (unsharded) weights in the plain
model's names, and an optimizer state keyed by parameter name, so a run may resume under another
strategy or world size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.checkpoint import checkpoint

from lmforge.model.gpt import GPT


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits among the ranks that `torchrun` started (one rank without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def distributed_env() -> DistributedEnv:
    """Rank, world size and local rank from the variables `torchrun` sets (defaults: one rank)."""
    return DistributedEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(env: DistributedEnv, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes. No-op for one rank."""
    if not env.is_distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)


def apply_activation_checkpointing(model: GPT) -> None:
    """Recompute each block's activations in the backward pass instead of storing them: memory
    per block drops to its input, for about one extra forward pass of compute.

    The block's `forward` is wrapped in place (not the module), so weight names do not change.
    """
    for block in model.blocks:
        inner = block.forward

        def checkpointed(*args: Any, _inner: Callable = inner) -> torch.Tensor:
            if not torch.is_grad_enabled():  # evaluation and generation: nothing to save
                return _inner(*args)
            return checkpoint(_inner, *args, use_reentrant=False)

        block.forward = checkpointed


def apply_compile(model: GPT) -> None:
    """`torch.compile` each block in place: blocks share one shape, so one graph serves them all,
    and weight names stay those of the plain model (no `_orig_mod.` prefix in checkpoints)."""
    for block in model.blocks:
        block.compile()


def apply_ddp(model: GPT, device: torch.device) -> nn.Module:
    """Wrap for data parallelism; the wrapper broadcasts rank 0's weights when it is built."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def apply_fsdp(model: GPT, bf16: bool) -> GPT:
    """Shard each block, then the root (embeddings, final norm, head), with FSDP2.

    With bf16, parameters are gathered and computed in bf16 while the sharded master weights,
    gradients' reduction and optimizer state stay fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs = {"mp_policy": policy} if bf16 else {}
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


# --- pipeline parallelism ---------------------------------------------------------------------


class PipelineStageModel(nn.Module):
    """Blocks [first, last) of a GPT, plus the token embedding on the first stage and the final
    norm and head on the last. Sub-modules are the GPT's own, so weight names stay global; so is
    the computation: the GPT's `embed`, its rope tables, and its norm and head as in `forward`.

    The first stage takes token ids [B, T]; the others take hidden states [B, T, d_model]; the
    last returns logits.
    """

    def __init__(self, model: GPT, first: int, last: int) -> None:
        super().__init__()
        config = model.config
        self.config = config
        self.is_first, self.is_last = first == 0, last == config.n_layer
        self.tok_emb = model.tok_emb if self.is_first else None
        self.pos_emb = model.pos_emb if self.is_first else None
        # A bound method, not a sub-module: the stage trains the embeddings registered above,
        # never the rest of the GPT that the method belongs to.
        self.embed = model.embed if self.is_first else None
        self.rope = model.rope  # the tables move to the stage's device with it
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(first, last)})
        self.norm = model.norm if self.is_last else None
        self.lm_head = model.lm_head if self.is_last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        rope = self.rope(0, x.shape[1]) if self.rope is not None else None
        for block in self.blocks.values():
            x = block(x, rope, None)
        if self.is_last:
            x = self.lm_head(self.norm(x))
        return x

    def tied_embedding(self) -> nn.Parameter | None:
        """This stage's copy of the tied embedding/head matrix (None on middle stages or untied)."""
        if not self.config.tie_embeddings:
            return None
        if self.tok_emb is not None:
            return self.tok_emb.weight
        return self.lm_head.weight if self.lm_head is not None else None


def stage_layers(n_layer: int, stage: int, num_stages: int) -> tuple[int, int]:
    """The block range [first, last) of `stage`: as even as possible, earlier stages fuller."""
    if num_stages > n_layer:
        raise ValueError(
            f"cannot split {n_layer} blocks into {num_stages} pipeline stages: "
            "use at most one process per block"
        )
    base, extra = divmod(n_layer, num_stages)
    first = stage * base + min(stage, extra)
    return first, first + base + (1 if stage < extra else 0)


class PipelineRunner:
    """One rank's pipeline stage and its GPipe schedule: `train_step` and `eval_loss` take the
    whole (micro-)batch on every rank; only the first stage reads inputs, the last targets.

    With tied embeddings, the first and last stages each hold a copy of the matrix; their
    gradients are summed before the optimizer step (as Megatron does), so the copies stay equal.
    """

    def __init__(
        self, model: GPT, env: DistributedEnv, device: torch.device, n_microbatches: int
    ) -> None:
        from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

        self.env = env
        first, last = stage_layers(model.config.n_layer, env.rank, env.world_size)
        self.module = PipelineStageModel(model, first, last).to(device)
        self.n_microbatches = n_microbatches
        self.stage = PipelineStage(self.module, env.rank, env.world_size, device)
        self._loss_scale = 1.0
        self.schedule = ScheduleGPipe(self.stage, n_microbatches, loss_fn=self._loss)
        self.tied_group = None
        if model.config.tie_embeddings:
            # Every rank must take part in creating a group, even ranks outside it.
            self.tied_group = dist.new_group([0, env.world_size - 1])

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()) * self._loss_scale

    def _run(self, run: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of the batch on every rank (computed on the last stage, then broadcast)."""
        losses: list[torch.Tensor] = []
        if self.module.is_first:
            run(x)
        elif self.module.is_last:
            run(target=y, losses=losses)
        else:
            run()
        device = next(self.module.parameters()).device
        loss = torch.stack(losses).mean() if losses else torch.zeros((), device=device)
        dist.broadcast(loss, src=self.env.world_size - 1)
        return loss

    def train_step(self, x: torch.Tensor, y: torch.Tensor, grad_scale: float) -> torch.Tensor:
        """Forward and backward through all stages; gradients are scaled by `grad_scale`
        (1 / gradient-accumulation steps). Returns the unscaled mean loss of the batch."""
        self._loss_scale = grad_scale
        loss = self._run(self.schedule.step, x, y)
        return loss / grad_scale

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._loss_scale = 1.0
        self.module.eval()
        try:
            return self._run(self.schedule.eval, x, y)
        finally:
            self.module.train()

    def sync_tied_gradients(self) -> None:
        """Sum the tied matrix's gradient between the first and last stages."""
        weight = self.module.tied_embedding()
        if self.tied_group is None or weight is None:
            return
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        dist.all_reduce(weight.grad, group=self.tied_group)

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip all stages' gradients to a global L2 norm of `max_norm` (inf: measure only);
        returns the norm before clipping. The tied matrix is counted once (on the first stage)
        but scaled on both, so its copies stay equal."""
        params = [p for p in self.module.parameters() if p.grad is not None]
        tied = self.module.tied_embedding()
        counted = params
        if tied is not None and self.module.is_last and not self.module.is_first:
            counted = [p for p in params if p is not tied]
        device = params[0].grad.device
        squares = torch.zeros((), device=device, dtype=torch.float32)
        for p in counted:
            squares += p.grad.detach().float().pow(2).sum()
        dist.all_reduce(squares)
        total = squares.sqrt()
        if math.isfinite(max_norm):
            scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # as clip_grad_norm_ does
            for p in params:
                p.grad.detach().mul_(scale.to(p.grad.dtype))
        return total

    def full_model_state(self) -> dict[str, Any]:
        """Every stage's weights gathered on the CPU of rank 0, in the plain GPT's names (other
        ranks: empty). A collective: every rank calls it."""
        local = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        parts = self._gather_on_main(local)
        return {k: v for part in parts for k, v in part.items()} if self.env.is_main else {}

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Every stage's optimizer state, keyed by parameter name, merged on rank 0 (other
        ranks: empty). A collective: every rank calls it."""
        local = get_optimizer_state_dict(
            self.module, optimizer, options=StateDictOptions(cpu_offload=True)
        )
        parts = self._gather_on_main(local)
        if not self.env.is_main:
            return {}
        merged: dict[str, Any] = {"state": {}, "param_groups": []}
        for part in parts:
            merged["state"].update(part["state"])
            for index, group in enumerate(part["param_groups"]):
                if index == len(merged["param_groups"]):
                    merged["param_groups"].append({**group, "params": []})
                merged["param_groups"][index]["params"].extend(group["params"])
        return merged

    def _gather_on_main(self, local: Any) -> list[Any]:
        """Every rank's `local`, in rank order, on rank 0 (other ranks: None)."""
        parts: list[Any] = [None] * self.env.world_size if self.env.is_main else None
        dist.gather_object(local, parts, dst=0)
        return parts


# --- strategy-independent checkpoint state ----------------------------------------------------


def full_model_state(module: nn.Module, env: DistributedEnv) -> dict[str, Any]:
    """Unsharded weights in the plain GPT's names, on the CPU when distributed; complete on
    rank 0 at least. A collective under FSDP: every rank must call it. (Pipeline stages:
    `PipelineRunner.full_model_state`.)"""
    offload = StateDictOptions(full_state_dict=True, cpu_offload=env.is_distributed)
    return get_model_state_dict(module, options=offload)


def full_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, env: DistributedEnv
) -> dict[str, Any]:
    """Optimizer state keyed by parameter name, unsharded; complete on rank 0 at least.
    A collective under FSDP: every rank must call it. (Pipeline stages:
    `PipelineRunner.full_optimizer_state`.)"""
    offload = StateDictOptions(full_state_dict=True, cpu_offload=env.is_distributed)
    return get_optimizer_state_dict(module, optimizer, options=offload)


def load_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], sharded: bool
) -> None:
    """Load a `full_optimizer_state` into `optimizer`: every rank passes the whole state and
    keeps its own part (its shard under FSDP, its stage's parameters under pipelining)."""
    own = {name for name, _ in module.named_parameters()}
    state = {
        "state": {k: v for k, v in state["state"].items() if k in own},
        "param_groups": [
            {**group, "params": [k for k in group["params"] if k in own]}
            for group in state["param_groups"]
        ],
    }
    options = StateDictOptions(full_state_dict=sharded)
    set_optimizer_state_dict(module, optimizer, state, options=options)
