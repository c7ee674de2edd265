"""Training strategies: how one rank runs the steps of training a plain `GPT`.

The trainer (`lmforge.model.train`) never asks which strategy it runs: it calls a
`TrainingStrategy`'s methods, and each strategy drives one of the wrappers that
`lmforge.model.parallel` applies from outside:

- "single" (`SingleProcessStrategy`): one process, the model as it is.
- "ddp" (`DDPStrategy`): every rank holds the whole model; gradients are all-reduced.
- "fsdp" (`FSDPStrategy`): parameters, gradients and optimizer state sharded across ranks.
- "pipeline" (`PipelineStrategy`): each rank runs a slice of the blocks on a shared batch.

Whatever the strategy, checkpoints hold the plain model's full weights and an optimizer state
keyed by parameter name (`full_model`, `full_optimizer_state`), so a run resumes under any other.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lmforge.model.gpt import GPT
from lmforge.model.loss import linear_cross_entropy
from lmforge.model.parallel import (
    DistributedEnv,
    PipelineRunner,
    apply_ddp,
    apply_fsdp,
    full_model_state,
    full_optimizer_state,
    load_optimizer_state,
)
from lmforge.model.runtime import autocast_context, uses_bf16

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class TrainingStrategy:
    """One rank's way of training a GPT; the trainer calls only these methods.

    Life cycle: `wrap(model)` once its weights are final (a resumed run has loaded them), an
    optimizer over `module`'s parameters, then per optimizer step `forward_backward` for each
    micro-batch and `clip_gradients`; `validation_loss` between steps; `full_model` and
    `full_optimizer_state` for a checkpoint. Methods that gather or reduce across ranks are
    collectives: every rank calls them, in the same order.
    """

    # Ranks read different parts of the global batch; pipeline stages all read the same one.
    data_parallel = True
    model: GPT  # the plain model given to `wrap`
    module: nn.Module  # the parameters this rank trains: all, its shards, or its stage's
    forward_module: nn.Module  # what runs the forward pass: `module`, or a wrapper around it

    def __init__(self, env: DistributedEnv, device: torch.device, dtype: str) -> None:
        self.env = env
        self.device = device
        self.autocast = autocast_context(device, dtype)

    @property
    def data_rank(self) -> int:
        return self.env.rank if self.data_parallel else 0

    @property
    def data_world(self) -> int:
        """How many ranks read different batches: the global batch is this many local ones."""
        return self.env.world_size if self.data_parallel else 1

    def wrap(self, model: GPT) -> nn.Module:
        """Put `model` on this rank's device under the strategy. Returns `module`: the
        parameters this rank trains (give them to the optimizer), in the plain model's names."""
        model.to(self.device)
        self.model = self.module = self.forward_module = model
        return self.module

    def forward_backward(
        self, x: torch.Tensor, y: torch.Tensor, grad_accum: int, last_micro_batch: bool
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch, the gradients accumulating divided by
        `grad_accum`; `last_micro_batch` marks the one that completes the step's gradients.
        Returns the micro-batch's mean loss (detached)."""
        with self.autocast:
            logits = self.forward_module(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        (loss / grad_accum).backward()
        return loss.detach()

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip the step's gradients to a global L2 norm of `max_norm` (inf: measure only);
        returns the norm before clipping."""
        # Under FSDP the parameters are DTensors and the norm is computed across shards.
        return torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)

    def mean_over_data_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a per-rank scalar (a loss) over the ranks that read different batches:
        the global batch's value. Reduces `value` in place."""
        if self.data_world > 1:
            dist.all_reduce(value)
            value /= self.data_world
        return value

    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of one batch, without gradients (called by `validation_loss`)."""
        with self.autocast:
            logits = self.forward_module(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    @torch.no_grad()
    def validation_loss(self, batches: Batches) -> float:
        """Mean cross-entropy per target token over `batches`, in eval mode meanwhile."""
        self.module.eval()
        total, count = 0.0, 0
        try:
            for x, y in batches:
                x, y = x.to(self.device), y.to(self.device)
                total += self.eval_loss(x, y).item() * y.numel()
                count += y.numel()
        finally:
            self.module.train()
        return total / count

    def full_model(self) -> GPT:
        """The whole trained model as a plain `GPT` on rank 0, for saving (other ranks: any)."""
        return self.model

    def _assemble_model(self, weights: dict[str, torch.Tensor]) -> GPT:
        """A plain GPT around gathered `weights` (the tensors themselves, no copy) on rank 0;
        other ranks, which gathered nothing, get `model` back. For sharding strategies."""
        if not self.env.is_main:
            return self.model
        config = self.model.config
        with torch.device("meta"):  # no memory until the gathered tensors are assigned
            gathered = GPT(config)
        gathered.load_state_dict(weights, strict=False, assign=True)
        if config.tie_embeddings:
            gathered.lm_head.weight = gathered.tok_emb.weight
        missing = [name for name, p in gathered.named_parameters() if p.is_meta]
        if missing:
            raise RuntimeError(f"gathered weights lack {', '.join(missing)}")
        return gathered

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state keyed by parameter name, unsharded; complete on rank 0."""
        return full_optimizer_state(self.module, optimizer, self.env)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a `full_optimizer_state` (of any strategy); each rank keeps its own part."""
        load_optimizer_state(self.module, optimizer, state, sharded=False)


class SingleProcessStrategy(TrainingStrategy):
    """One process; on a CPU (and not compiled) the head and loss run as one chunked pass."""

    def __init__(self, env: DistributedEnv, device: torch.device, dtype: str, compiled: bool):
        super().__init__(env, device, dtype)
        # The chunked head+loss pass is cache-friendly on a CPU; it calls the model's own
        # methods instead of its forward, so only without a wrapper, and not under compile.
        self.fused_loss = device.type == "cpu" and not compiled

    def forward_backward(
        self, x: torch.Tensor, y: torch.Tensor, grad_accum: int, last_micro_batch: bool
    ) -> torch.Tensor:
        if not self.fused_loss:
            return super().forward_backward(x, y, grad_accum, last_micro_batch)
        hidden = self.model.hidden_states(x).flatten(0, 1)
        loss = linear_cross_entropy(hidden, self.model.lm_head.weight, y.flatten())
        (loss / grad_accum).backward()
        return loss.detach()


class DDPStrategy(TrainingStrategy):
    """DistributedDataParallel: the whole model on every rank, gradients all-reduced once per
    optimizer step (on the last micro-batch's backward)."""

    def wrap(self, model: GPT) -> nn.Module:
        super().wrap(model)
        self.forward_module = apply_ddp(model, self.device)
        return self.module

    def forward_backward(
        self, x: torch.Tensor, y: torch.Tensor, grad_accum: int, last_micro_batch: bool
    ) -> torch.Tensor:
        if last_micro_batch:
            return super().forward_backward(x, y, grad_accum, last_micro_batch)
        # One no_sync around forward and backward: DDP's forward decides whether the backward
        # reduces, and a no_sync context cannot be entered twice.
        with self.forward_module.no_sync():
            return super().forward_backward(x, y, grad_accum, last_micro_batch)


class FSDPStrategy(TrainingStrategy):
    """FSDP2: blocks and root sharded across ranks. With bf16 it casts parameters itself (bf16
    compute, fp32 master weights and reduction), so autocast is not used."""

    def __init__(self, env: DistributedEnv, device: torch.device, dtype: str) -> None:
        super().__init__(env, device, "float32")
        self.bf16 = uses_bf16(device, dtype)

    def wrap(self, model: GPT) -> nn.Module:
        super().wrap(model)
        self.module = self.forward_module = apply_fsdp(model, self.bf16)
        return self.module

    def forward_backward(
        self, x: torch.Tensor, y: torch.Tensor, grad_accum: int, last_micro_batch: bool
    ) -> torch.Tensor:
        self.module.set_requires_gradient_sync(last_micro_batch)  # reduce-scatter once per step
        return super().forward_backward(x, y, grad_accum, last_micro_batch)

    def validation_loss(self, batches: Batches) -> float:
        loss = super().validation_loss(batches)
        # No backward follows to re-shard the root: its parameters must be shards again.
        self.module.reshard()
        return loss

    def full_model(self) -> GPT:
        return self._assemble_model(full_model_state(self.module, self.env))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        load_optimizer_state(self.module, optimizer, state, sharded=True)


class PipelineStrategy(TrainingStrategy):
    """Pipeline stages (GPipe): every rank reads the whole batch, split into `microbatches`;
    runs in float32 whatever the dtype."""

    data_parallel = False

    def __init__(self, env: DistributedEnv, device: torch.device, microbatches: int) -> None:
        super().__init__(env, device, "float32")
        self.microbatches = microbatches

    def wrap(self, model: GPT) -> nn.Module:
        self.model = model
        self.runner = PipelineRunner(model, self.env, self.device, self.microbatches)
        self.module = self.runner.module  # this rank's stage
        return self.module

    def forward_backward(
        self, x: torch.Tensor, y: torch.Tensor, grad_accum: int, last_micro_batch: bool
    ) -> torch.Tensor:
        return self.runner.train_step(x, y, 1.0 / grad_accum).detach()

    def clip_gradients(self, max_norm: float) -> torch.Tensor:
        self.runner.sync_tied_gradients()  # the tied matrix's two copies get one gradient
        return self.runner.clip_gradients(max_norm)

    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.runner.eval_loss(x, y)

    def validation_loss(self, batches: Batches) -> float:
        # The schedule splits a batch into equal micro-batches: a ragged last batch is left out.
        usable = [(x, y) for x, y in batches if len(x) % self.microbatches == 0]
        return super().validation_loss(usable)

    def full_model(self) -> GPT:
        return self._assemble_model(self.runner.full_model_state())

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return self.runner.full_optimizer_state(optimizer)


STRATEGIES = ("single", "ddp", "fsdp", "pipeline")


def check_strategy(strategy: str, world_size: int) -> None:
    """Raise ValueError when `strategy` is unknown or cannot run on `world_size` processes."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "single" and world_size > 1:
        raise ValueError(
            f"strategy 'single' runs one process but {world_size} were started: "
            "choose ddp, fsdp or pipeline"
        )
    if strategy == "pipeline" and world_size < 2:
        raise ValueError("strategy 'pipeline' needs at least 2 processes (one per stage)")


def make_strategy(
    name: str,
    env: DistributedEnv,
    device: torch.device,
    dtype: str,
    microbatches: int,
    compiled: bool,
) -> TrainingStrategy:
    """The strategy called `name` (one of STRATEGIES) for this rank; `dtype` as in TrainConfig,
    `microbatches` for pipelines, `compiled` when the blocks are compiled.
    Raises ValueError when it cannot run on env.world_size processes."""
    check_strategy(name, env.world_size)
    if name == "single":
        return SingleProcessStrategy(env, device, dtype, compiled)
    if name == "ddp":
        return DDPStrategy(env, device, dtype)
    if name == "fsdp":
        return FSDPStrategy(env, device, dtype)
    return PipelineStrategy(env, device, microbatches)
