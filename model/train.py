"""Pretrain a GPT on token shards: `train(TrainJob(...), on_log=...) -> TrainResult`.

Writes into `out_dir`: resumable checkpoints under `checkpoints/` while it runs, then the final
`model.safetensors`, `model_config.json`, a copy of the shards' `tokenizer.json`, and last of all
`manifest.json`, whose presence marks the run finished. Metrics leave through `on_log`; the
orchestration layer decides where they go (this module never imports a tracker).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm.auto import tqdm

from lmforge.errors import OutputRefused
from lmforge.manifest import (
    MANIFEST_NAME,
    build_manifest,
    claim_output_dir,
    describe_input,
    utc_now,
    write_manifest,
)
from lmforge.model.checkpoint import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    check_model_dir,
    latest_checkpoint,
    load_checkpoint_weights,
    load_training_state,
    save_checkpoint,
    save_model,
)
from lmforge.model.config import ModelConfig, ModelSpec
from lmforge.model.data import (
    TokenSplit,
    TrainBatches,
    open_token_split,
    sequential_windows,
    shards_vocab_size,
)
from lmforge.model.gpt import GPT
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.model.mfu import model_flops_utilization, peak_flops
from lmforge.model.parallel import (
    apply_activation_checkpointing,
    apply_compile,
    distributed_env,
    init_distributed,
)
from lmforge.model.runtime import (
    LogCallback,
    StopVote,
    build_optimizer,
    resolve_device,
    rng_state,
    set_rng_state,
)
from lmforge.model.schedule import LRSchedule, ScheduleKind
from lmforge.model.strategies import (
    TrainingStrategy,
    check_strategy,
    make_strategy,
)
from lmforge.stopping import Stopped, stop_at_safe_points

STAGE = "pretrain"  # the stage a finished run's manifest names


class TrainConfig(BaseModel):
    """How a model is trained: optimizer, schedule, batches, precision, parallelism and when to
    log, evaluate and checkpoint. Defaults are the CPU demo's: 300 steps of 16 x 256 tokens
    (~1.2M tokens), about three minutes on two free CPU cores. The last step always logs,
    evaluates and checkpoints, whatever the intervals. Invalid values and combinations raise
    ValidationError (a ValueError) naming the fields, before any work.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int = Field(300, ge=1, description="Optimizer steps of the schedule.")
    batch_size: int = Field(
        16, ge=1,
        description="Sequences per optimizer step per data-parallel rank (the global batch is "
        "batch_size x processes for ddp and fsdp).",
    )  # fmt: skip
    seq_len: int | None = Field(
        None, ge=8, description="Context length in tokens; default: the model's max_seq_len."
    )
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(3e-3, gt=0.0, description="Peak learning rate (after warmup).")
    min_lr: float | None = Field(
        None, ge=0.0, description="Learning rate at the end of the decay; default: lr / 10."
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="Linear warmup steps; default: 10% of max_steps."
    )
    lr_schedule: ScheduleKind = Field(
        "cosine",
        description="Decay after warmup: cosine (to min_lr at max_steps) or wsd "
        "(warmup-stable-decay: constant, then a linear decay over the last steps).",
    )
    weight_decay: float = Field(
        0.1, ge=0.0, description="AdamW weight decay (2-D weights only)."
    )
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas, each in [0, 1).")
    grad_clip: float = Field(1.0, ge=0.0, description="Gradient norm clip; 0: no clipping.")
    eval_every: int = Field(100, ge=1, description="Validation loss every N steps (and at the end).")
    eval_batches: int = Field(20, ge=1, description="Validation batches per evaluation.")
    log_every: int = Field(10, ge=1, description="Training metrics every N steps (and at the end).")
    checkpoint_every: int = Field(
        100, ge=1, description="Resumable checkpoint every N steps (and at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept on disk.")
    seed: int = Field(0, ge=0, description="Seed of initialisation and batch order.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, float32 on the CPU."
    )
    resume: bool = Field(
        False, description="Continue from the newest checkpoint in the output folder."
    )
    init_from: str | None = Field(
        None,
        description="Start from this model's weights (a training output or checkpoint folder "
        "of the same shape and tokenizer) instead of random ones; the schedule starts anew.",
    )
    stop_after: int | None = Field(
        None, ge=1, description="Checkpoint and stop after N steps of a longer schedule."
    )
    progress: bool = Field(True, description="Show a progress bar on the terminal.")
    strategy: Literal["single", "ddp", "fsdp", "pipeline"] | None = Field(
        None,
        description="Parallelism: single process, ddp, fsdp (FSDP2) or pipeline; default: "
        "single for one process, ddp for several.",
    )
    compile: bool = Field(False, description="torch.compile each transformer block.")
    activation_checkpointing: bool = Field(
        False, description="Recompute block activations in the backward pass to save memory."
    )
    microbatches: int = Field(
        2, ge=1, description="Pipeline micro-batches per batch (strategy pipeline)."
    )

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError(f"each beta must be in [0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        if self.strategy == "pipeline" and self.batch_size % self.microbatches:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of "
                f"microbatches={self.microbatches} for pipeline parallelism"
            )
        self.schedule()  # lr, min_lr, warmup_steps and lr_schedule together
        return self

    def schedule(self) -> LRSchedule:
        min_lr = self.lr / 10 if self.min_lr is None else self.min_lr
        warmup = self.max_steps // 10 if self.warmup_steps is None else self.warmup_steps
        return LRSchedule(self.lr, min_lr, warmup, self.max_steps, self.lr_schedule)


class TrainJob(BaseModel):
    """One `train` call: the shards it reads, the folder it writes, the model and how to train
    it. Recorded as the finished run's manifest params."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shards_dir: str = Field(description="Token shard directory written by build_shards.")
    out_dir: str = Field(description="Directory for checkpoints and the final model.")
    model: ModelSpec = Field(ModelSpec(), description="The model's shape.")
    train: TrainConfig = Field(TrainConfig(), description="How it is trained.")


@dataclass
class TrainResult:
    """What a `train` call achieved. completed is False when stop_after ended it early."""

    out_dir: Path
    completed: bool
    steps: int
    tokens: int
    final_train_loss: float
    final_val_loss: float | None
    num_parameters: int
    checkpoint: Path | None
    seconds: float


def train(job: TrainJob, on_log: LogCallback | None = None) -> TrainResult:
    """Train (or resume) the run described by `job`; see the module docstring for outputs.

    Run it directly for one process, or on every rank under `torchrun` (see
    `lmforge.model.launch`): the ranks find each other through torchrun's environment variables,
    rank 0 logs and writes the files, and all ranks return the same result.

    on_log(step, metrics) receives {"loss", "lr", "grad_norm", "tokens_per_s", "tokens", "epoch"}
    and, when the device's peak is known, "mfu" every log_every steps, and {"val_loss"} every
    eval_every steps (step = optimizer steps done; loss and tokens/s are over all ranks).
    Raises ManifestError/TokenDataError for unusable shards, OutputRefused when out_dir is not
    this run's to write (see `check_out_dir`), CheckpointError for a checkpoint that cannot be
    read, ValueError when a resumed checkpoint's settings differ or the strategy does not fit
    the number of processes. Until the first step nothing in out_dir changes: a run that fails
    to resume leaves a finished run finished.

    SIGINT or SIGTERM during the loop (on any rank) ends it after the step under way: every
    rank stops after the same step, which logs and checkpoints, and `lmforge.stopping.Stopped`
    is raised naming that step and checkpoint (a preempted job resumes from it).
    """
    wall_start = time.perf_counter()
    started_at = utc_now()
    config = job.train
    env = distributed_env()
    strategy_name = config.strategy or ("single" if env.world_size == 1 else "ddp")
    check_strategy(strategy_name, env.world_size)
    log = (on_log or (lambda step, metrics: None)) if env.is_main else (lambda step, metrics: None)
    shards_dir, out_dir = Path(job.shards_dir), Path(job.out_dir)
    shards_input = describe_input(shards_dir)  # fails fast when the shards stage never finished
    tokenizer_path = shards_dir / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"{shards_dir} has no {TOKENIZER_FILE}: it is not a shards output")
    train_split = open_token_split(shards_dir / "train")
    val_split = open_token_split(shards_dir / "val")
    model_config = job.model.resolve(shards_vocab_size(shards_dir, train_split))
    seq_len = config.seq_len or model_config.max_seq_len
    if seq_len > model_config.max_seq_len:
        raise ValueError(
            f"seq_len={seq_len} exceeds the model's max_seq_len={model_config.max_seq_len}"
        )
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None and env.is_distributed:
        device = torch.device("cuda", env.local_rank)  # one GPU per rank
    owns_process_group = env.is_distributed and not dist.is_initialized()
    init_distributed(env, device)
    strategy = make_strategy(
        strategy_name, env, device, config.dtype, config.microbatches, config.compile
    )
    resume_from = check_out_dir(out_dir, config.resume)

    torch.manual_seed(config.seed)  # every rank builds the same initial weights
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left outside autocast
    model = GPT(model_config)
    flops_per_token = model.flops_per_token(seq_len)
    num_parameters = model.num_parameters()
    data_rank, data_world = strategy.data_rank, strategy.data_world
    batches = TrainBatches(
        train_split, config.batch_size, seq_len, config.seed, rank=data_rank, world_size=data_world
    )
    # Sized by the global batch, so every strategy and world size validates on the same tokens.
    eval_batches = validation_batches(
        val_split, config.batch_size * data_world, seq_len, config.eval_batches
    )
    settings = trajectory_settings(config, model_config)

    step, tokens, train_loss = 0, 0, math.nan
    state: dict[str, Any] | None = None
    if resume_from is not None:
        state = load_resume_state(resume_from)
        check_resumable(resume_from, state["settings"], settings)
        batches.load_state_dict(state["loader"])
        load_checkpoint_weights(model, resume_from)  # before sharding: every rank loads it all
        step, tokens, train_loss = state["step"], state["tokens"], state["train_loss"]
    elif config.init_from:
        check_same_shape(Path(config.init_from), model_config)
        load_checkpoint_weights(model, config.init_from)

    # Parallelism from outside, in torchtitan's order: checkpointing, compile, then the strategy.
    if config.activation_checkpointing:
        apply_activation_checkpointing(model)
    if config.compile:
        apply_compile(model)
    trained = strategy.wrap(model)  # the parameters this rank trains
    optimizer = build_optimizer(trained, config.lr, config.weight_decay, config.betas, device)
    if state is not None:
        strategy.load_optimizer_state(optimizer, state["optimizer"])
        set_rng_state(state["rng"], device)
    if env.is_distributed:
        dist.barrier()  # every rank has looked at out_dir before rank 0 changes it
    if env.is_main:
        begin_writing(out_dir)

    last_step = config.max_steps
    if config.stop_after is not None:
        last_step = min(config.max_steps, step + config.stop_after)
    tokens_per_step = config.batch_size * seq_len * config.grad_accum * data_world
    schedule = config.schedule()
    peak: float | None = None
    val_loss: float | None = None
    saved: Path | None = None
    window_start, window_steps, paused = time.perf_counter(), 0, 0.0
    trained.train()
    progress = tqdm(
        total=config.max_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not (config.progress and env.is_main),
        # Redirected to a log file, redraws are lines: keep them few.
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    stop_vote = StopVote(env.is_distributed)
    # A stop signal ends the loop after the step under way, which then logs and checkpoints.
    with stop_at_safe_points():
        while step < last_step:
            lr = schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                # Micro-batches are consecutive loader steps: the order survives a grad_accum split.
                x, y = batches.batch(step * config.grad_accum + micro)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                last_micro_batch = micro == config.grad_accum - 1
                loss_sum += strategy.forward_backward(x, y, config.grad_accum, last_micro_batch)
            clip = config.grad_clip if config.grad_clip > 0 else math.inf
            grad_norm = strategy.clip_gradients(clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            window_steps += 1
            progress.update(1)

            stop = stop_vote()
            is_log_step = step % config.log_every == 0 or step == last_step or stop is not None
            is_eval_step = step % config.eval_every == 0 or step == config.max_steps
            # The last step of every call checkpoints: a run shorter than the interval still
            # leaves one to resume or inspect; so does a stopped run (a preempted job resumes).
            is_checkpoint_step = (
                step % config.checkpoint_every == 0 or step == last_step or stop is not None
            )
            if is_log_step or is_checkpoint_step or step == config.max_steps:
                loss_sum = strategy.mean_over_data_ranks(loss_sum)  # the global batch's loss
                train_loss = (loss_sum / config.grad_accum).item()  # .item() waits for the GPU
            if is_log_step:
                seconds = time.perf_counter() - window_start - paused
                tokens_per_s = window_steps * tokens_per_step / max(seconds, 1e-9)
                metrics = {
                    "loss": train_loss,
                    "lr": lr,
                    "grad_norm": full_value(grad_norm),
                    "tokens_per_s": tokens_per_s,
                    "tokens": float(tokens),
                    "epoch": batches.epoch(step * config.grad_accum),
                }
                if env.is_main:
                    peak = peak if peak is not None else peak_flops(device)  # measured once
                    if peak:
                        metrics["mfu"] = model_flops_utilization(
                            flops_per_token, tokens_per_s, peak, env.world_size
                        )
                log(step, metrics)
                progress.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                window_start, window_steps, paused = time.perf_counter(), 0, 0.0
            pause_start = time.perf_counter()
            if is_eval_step:
                val_loss = strategy.validation_loss(eval_batches)
                log(step, {"val_loss": val_loss})
            if is_checkpoint_step:
                saved = save_training_checkpoint(
                    out_dir, step, strategy, optimizer, config.keep_checkpoints,
                    {
                        "step": step,
                        "tokens": tokens,
                        "train_loss": train_loss,
                        "settings": settings,
                        "loader": batches.state_dict(),
                        "rng": rng_state(device),
                    },
                )
            paused += time.perf_counter() - pause_start
            if stop is not None:
                progress.close()
                if owns_process_group:
                    dist.destroy_process_group()
                raise Stopped(stop, step=step, checkpoint=saved)
    progress.close()

    result = TrainResult(
        out_dir=out_dir,
        completed=step >= config.max_steps,
        steps=step,
        tokens=tokens,
        final_train_loss=train_loss,
        final_val_loss=val_loss,
        num_parameters=num_parameters,
        checkpoint=saved or latest_checkpoint(out_dir),
        seconds=0.0,
    )
    if result.completed:
        if result.final_val_loss is None:  # resumed a run whose last step was already done
            result.final_val_loss = strategy.validation_loss(eval_batches)
        final = strategy.full_model()
        if env.is_main:
            write_final_outputs(job, result, final, tokenizer_path, shards_input, started_at)
    if env.is_distributed:
        dist.barrier()  # nobody returns before rank 0 has written the outputs
        if owns_process_group:
            dist.destroy_process_group()
    result.seconds = time.perf_counter() - wall_start
    return result


def full_value(value: torch.Tensor) -> float:
    """A scalar tensor as a float; a sharded (DTensor) scalar is gathered first."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value.item())


def save_training_checkpoint(
    out_dir: Path,
    step: int,
    strategy: TrainingStrategy,
    optimizer: torch.optim.Optimizer,
    keep: int,
    state: dict[str, Any],
) -> Path | None:
    """Gather weights and optimizer state from every rank; rank 0 writes the checkpoint (and
    keeps the newest `keep`).

    The optimizer state is keyed by parameter name and unsharded, so any strategy resumes it.
    Returns the checkpoint path (None on other ranks).
    """
    state = {**state, "optimizer": strategy.full_optimizer_state(optimizer)}
    final = strategy.full_model()
    saved = None
    if strategy.env.is_main:
        saved = save_checkpoint(out_dir, step, final, state, keep)
    if strategy.env.is_distributed:
        dist.barrier()  # a checkpoint is complete for all ranks before any goes on
    return saved


def validation_batches(
    split: TokenSplit, batch_size: int, seq_len: int, num_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first num_batches·batch_size windows of the split, as (inputs, targets) batches: the
    same tokens at every evaluation, so val losses of one run compare step to step."""
    max_tokens = num_batches * batch_size * seq_len
    windows = list(sequential_windows(split, seq_len, max_tokens=max_tokens))
    batches = []
    for first in range(0, len(windows), batch_size):
        tokens = torch.from_numpy(np.stack(windows[first : first + batch_size]).astype(np.int64))
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    return batches


def check_same_shape(init_from: Path, model_config: ModelConfig) -> None:
    """ValueError naming the differing settings when `init_from` holds another shape."""
    theirs, ours = asdict(check_model_dir(init_from)), asdict(model_config)
    differing = sorted(key for key in ours if key != "init_std" and theirs[key] != ours[key])
    if differing:
        shown = ", ".join(f"{key}={theirs[key]!r} (this run: {ours[key]!r})" for key in differing)
        raise ValueError(f"init_from {init_from} is another model shape: {shown}")


def check_out_dir(out_dir: Path, resume: bool) -> Path | None:
    """The checkpoint a run in out_dir continues from (None: a fresh start); changes nothing.

    A folder holding checkpoints is a training run (finished or not): continued with resume,
    refused without it rather than mixing two runs' checkpoints. A folder without any may
    receive a run when `claim_output_dir` allows a STAGE output there (a new or empty
    folder, a finished run's output), or when it holds only a checkpoints/ folder (a run that
    stopped before its first checkpoint was complete); anything else, such as a user's folder
    of other files, is refused with OutputRefused.
    """
    newest = latest_checkpoint(out_dir)
    if newest is not None:
        if not resume:
            raise OutputRefused(
                f"{out_dir} holds the checkpoints of a training run (newest: {newest.name}): "
                "pass --resume (resume=True) to continue it, or choose another folder for --out"
            )
        return newest
    if not (out_dir.is_dir() and {p.name for p in out_dir.iterdir()} == {CHECKPOINTS_DIR}):
        claim_output_dir(out_dir, STAGE)
    return None


RESUME_STATE_KEYS = ("step", "tokens", "train_loss", "settings", "loader", "rng", "optimizer")


def load_resume_state(checkpoint: Path) -> dict[str, Any]:
    """The training state a run continues from; CheckpointError when the file is unreadable or
    is not a training checkpoint's state (see `save_training_checkpoint` for what it holds)."""
    state = load_training_state(checkpoint)
    missing = [key for key in RESUME_STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(
            f"{checkpoint} cannot be resumed from: its training state lacks {', '.join(missing)}; "
            "resume from a checkpoint lmforge's training wrote, or start a new run elsewhere"
        )
    return state


def begin_writing(out_dir: Path) -> None:
    """Make out_dir ready for this run's files, once all it resumes from has loaded. The
    manifest goes first: it would vouch for files about to change."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)


def trajectory_settings(config: TrainConfig, model_config: ModelConfig) -> dict[str, Any]:
    """The settings that fix the sequence of weights: a resumed run must match them exactly."""
    return {
        "model": model_config.to_dict(),
        "schedule": config.schedule().to_dict(),
        "grad_accum": config.grad_accum,
        "weight_decay": config.weight_decay,
        "betas": list(config.betas),
        "grad_clip": config.grad_clip,
        "seed": config.seed,
    }


def check_resumable(checkpoint: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    changed = sorted(key for key in current if saved.get(key) != current[key])
    if changed:
        raise ValueError(
            f"cannot resume from {checkpoint}: these settings differ from the run that wrote it: "
            f"{', '.join(changed)}. Resume with the original settings, or start a new out_dir"
        )


def write_final_outputs(
    job: TrainJob,
    result: TrainResult,
    model: GPT,
    tokenizer_path: Path,
    shards_input: dict[str, Any],
    started_at: str,
) -> None:
    """Final weights, config and tokenizer, then the manifest that declares them finished."""
    out_dir = result.out_dir
    save_model(model, out_dir)
    shutil.copyfile(tokenizer_path, out_dir / TOKENIZER_FILE)
    counts = {
        "steps": result.steps,
        "tokens": result.tokens,
        "final_train_loss": result.final_train_loss,
        "final_val_loss": result.final_val_loss,
        "parameters": result.num_parameters,
    }
    manifest = build_manifest(
        out_dir,
        STAGE,
        params=job.model_dump(mode="json"),
        inputs=[shards_input],
        counts=counts,
        extra={"model_config": model.config.to_dict()},
        started_at=started_at,
        files=[out_dir / WEIGHTS_FILE, out_dir / CONFIG_FILE, out_dir / TOKENIZER_FILE],
    )
    write_manifest(out_dir, manifest)
