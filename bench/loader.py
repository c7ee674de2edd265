"""Training loader throughput against what a training step of the `small` preset consumes.

    python bench/loader.py                     # synthetic shards, training step timed on the CPU
    python bench/loader.py --shards SHARDS     # real shards (their train split)
    python bench/loader.py --device cuda       # time the training step on a GPU instead

The batch shape is the one a `small` run uses by default: `TrainConfig().batch_size` sequences
of `ModelConfig.preset("small").max_seq_len` tokens. The loader (`TrainBatches.batch`, the
memory-mapped shards to int64 tensors) is timed over many steps; the training step (forward,
backward, AdamW) once after a warm-up. On a CPU a full batch of `small` takes minutes, so the
step is timed at `--train-batch` sequences and scaled linearly to the full batch, which
overstates the consumption rate (larger batches run more efficiently), never understates it.
Target: loader batches/s >= 20 x training steps/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig
from lmforge.model.data import TrainBatches, open_token_split
from lmforge.model.gpt import GPT
from lmforge.model.shard_format import shard_name, shard_schema, token_dtype, write_shard
from lmforge.model.train import TrainConfig

TARGET = 20.0
VOCAB_SIZE = 8192  # the shards stage's default vocabulary


def synthetic_split(out: Path, tokens: int, shard_tokens: int, vocab_size: int) -> Path:
    """A split of random documents, in the shard format, as the shards stage would write it."""
    rng = np.random.default_rng(0)
    split = out / "train"
    split.mkdir(parents=True)
    schema = shard_schema(vocab_size, eot_id=0)
    for index, start in enumerate(range(0, tokens, shard_tokens)):
        size = min(shard_tokens, tokens - start)
        values = rng.integers(2, vocab_size, size, dtype=token_dtype(vocab_size))
        lengths = np.diff(np.unique(np.r_[0, rng.integers(1, size, size // 2000), size]))
        values[np.cumsum(lengths) - 1] = 0  # every document ends with <|endoftext|>
        doc_ids = [f"doc-{index}-{i}" for i in range(len(lengths))]
        write_shard(split / shard_name(index), schema, doc_ids, lengths, values)
    return split


def loader_batches_per_second(batches: TrainBatches, seconds: float) -> float:
    batches.batch(0)  # first touches of the memory map
    step, started = 1, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        batches.batch(step)
        step += 1
    return (step - 1) / elapsed


def training_step_seconds(
    config: ModelConfig, batch: int, seq_len: int, device: torch.device
) -> float:
    """Seconds of one forward + backward + AdamW step (after one warm-up step)."""
    torch.manual_seed(0)
    model = GPT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else None
    times = []
    for _ in range(2 if device.type == "cpu" else 6):
        started = time.perf_counter()
        with autocast or torch.autocast("cpu", enabled=False):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, help="a shards directory (default: synthetic)")
    parser.add_argument("--tokens", type=int, default=1 << 25, help="synthetic split size")
    parser.add_argument("--seconds", type=float, default=5.0, help="loader timing budget")
    parser.add_argument("--device", default="cpu", help="where the training step is timed")
    parser.add_argument(
        "--train-batch", type=int, default=1, help="sequences in the timed training step on "
        "the CPU (scaled to the full batch); on a GPU the full batch is timed"
    )
    args = parser.parse_args(argv)

    batch_size = TrainConfig().batch_size
    seq_len = ModelConfig.preset("small", VOCAB_SIZE).max_seq_len
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as scratch:
        split_dir = (
            args.shards / "train"
            if args.shards
            else synthetic_split(Path(scratch), args.tokens, 1 << 22, VOCAB_SIZE)
        )
        split = open_token_split(split_dir)
        batches = TrainBatches(split, batch_size, seq_len, seed=0)
        loader_rate = loader_batches_per_second(batches, args.seconds)
        vocab_size = split.vocab_size

    config = ModelConfig.preset("small", vocab_size)
    timed_batch = batch_size if device.type == "cuda" else min(args.train_batch, batch_size)
    step = training_step_seconds(config, timed_batch, seq_len, device)
    full_step = step * batch_size / timed_batch
    train_rate = 1 / full_step
    ratio = loader_rate / train_rate

    print(f"batch shape: {batch_size} x {seq_len} tokens (small preset, TrainConfig default)")
    print(f"split: {split.num_tokens:,} tokens in {len(split.paths)} shards, vocab {vocab_size}")
    print("\n| contender | batches/s | tokens/s | loader ÷ it |")
    print("|---|---|---|---|")
    tokens_per_batch = batch_size * seq_len
    print(
        f"| TrainBatches.batch | {loader_rate:,.0f} | {loader_rate * tokens_per_batch:,.0f} | 1 |"
    )
    scaled = f", {timed_batch} seqs timed and scaled" if timed_batch != batch_size else ""
    print(
        f"| small training step on {device.type} ({full_step:.2f} s/step{scaled}) | "
        f"{train_rate:.3f} | {train_rate * tokens_per_batch:,.0f} | {ratio:,.0f} |"
    )
    verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
    print(f"\nloader / training = {ratio:,.0f}x (target >= {TARGET:g}x) {verdict}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
