"""The held-out curve of one training run: its checkpoints scored on the shared held-out split.

Training reports a validation loss on its own variant's val split, which holds other documents
for every variant (a filter that drops a page drops it from val too), so those curves do not
compare. This scores every checkpoint the run kept on one held-out split instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.manifest import read_manifest
from lmforge.model.checkpoint import list_checkpoints, load_model
from lmforge.model.data import open_token_split
from lmforge.model.runtime import resolve_device
from lmforge.tasks.evaluate.checkpoint import split_bytes_per_token, validation_metrics
from lmforge.tasks.tokens.shards import STAGE as SHARDS_STAGE


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("step-"))


def heldout_curve(
    train_dir: str | Path,
    heldout_shards: str | Path,
    max_tokens: int,
    batch_size: int,
    seq_len: int | None = None,
    device: str = "cpu",
) -> list[dict[str, float]]:
    """`[{step, tokens, val_loss, val_bpb}, ...]` of every checkpoint kept in the finished
    training output `train_dir`, oldest first, each scored on the first `max_tokens` tokens of
    the val split of `heldout_shards` in windows of `seq_len` (default: the model's context).
    Tokens seen at a step are the run's tokens per step times the step.

    Raises ManifestError for a folder that is not a finished training or shards output,
    ValueError when the split cannot fill one window.
    """
    heldout = read_manifest(heldout_shards, stage=SHARDS_STAGE)
    counts = read_manifest(train_dir)["counts"]
    tokens_per_step = counts["tokens"] / max(counts["steps"], 1)
    bytes_per_token = split_bytes_per_token(heldout, "val")
    split = open_token_split(Path(heldout_shards) / "val")
    points = []
    for checkpoint in list_checkpoints(train_dir):
        model = load_model(checkpoint, device=resolve_device(device))
        metrics: dict[str, Any] = validation_metrics(
            model,
            split,
            seq_len or model.config.max_seq_len,
            batch_size,
            max_tokens,
            bytes_per_token=bytes_per_token,
        )
        step = checkpoint_step(checkpoint)
        points.append({
            "step": step,
            "tokens": round(step * tokens_per_step),
            "val_loss": metrics["val_loss"],
            "val_bpb": metrics["val_bpb"],
        })  # fmt: skip
    return points
