"""Token shards as one memory-mapped sequence, and the batches a training run draws from it.

The shard format (see `lmforge.model.shard_format`) keeps each shard's tokens in one contiguous
buffer read straight from the memory map, so opening a split costs no copy and training touches
only the pages it samples. When the split sits in a finished shards directory, its manifest is
checked first: a missing, added, truncated or (with `verify`) corrupt shard, or a tokenizer that
is not the one the shards were built with, is an error naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.manifest import MANIFEST_NAME, sha256_file
from lmforge.model.shard_format import (
    SHARD_PATTERN,
    TOKENIZER_FILE,
    TokenDataError,
    read_shard_tokens,
)

__all__ = [
    "TokenDataError",
    "TokenSplit",
    "TrainBatches",
    "open_token_split",
    "sequential_windows",
    "shards_vocab_size",
]


class TokenSplit:
    """The tokens of a split's shards, in file order, addressed as one sequence.

    `window(start, length)` is a view into the memory map when it lies inside one shard and a
    copy only when it crosses a shard boundary.
    """

    def __init__(
        self, shards: list[np.ndarray], paths: list[Path], vocab_size: int, eot_id: int
    ) -> None:
        self.shards = shards
        self.paths = paths
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        sizes = np.array([len(s) for s in shards], dtype=np.int64)
        # Shard i holds tokens [shard_starts[i], shard_starts[i + 1]).
        self.shard_starts = np.concatenate(([0], np.cumsum(sizes)))
        self.num_tokens = int(self.shard_starts[-1])

    def shard_index(self, position: int) -> int:
        """The index of the shard holding token `position`."""
        return int(np.searchsorted(self.shard_starts, position, side="right")) - 1

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as a 1-D array (read-only when it is a view)."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(
                f"window [{start}, {start + length}) is outside the split's "
                f"{self.num_tokens} tokens"
            )
        shard = self.shard_index(start)
        offset = start - int(self.shard_starts[shard])
        if offset + length <= len(self.shards[shard]):
            return self.shards[shard][offset : offset + length]
        pieces = []
        while length > 0:
            piece = self.shards[shard][offset : offset + length]
            pieces.append(piece)
            length -= len(piece)
            shard, offset = shard + 1, 0
        return np.concatenate(pieces)


def open_token_split(split_dir: str | Path, verify: bool = True) -> TokenSplit:
    """Memory-map every `shard-*.arrow` of `split_dir` (e.g. `SHARDS/train`).

    When `split_dir`'s parent holds the shards stage's manifest.json, the shards must be exactly
    the ones it lists, with their recorded sizes and vocabulary; `verify` also compares every
    shard's sha256 and the tokenizer.json beside them with the manifest (reads each file once,
    about a second per GB). Raises TokenDataError naming the file: a missing directory or no
    shards, a schema or metadata that is not the shard format's, shards that disagree on the
    vocabulary, or a shard or tokenizer that does not match the manifest.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise TokenDataError(
            f"{split_dir} is not a directory of token shards "
            "(build them with `lmforge shards build`)"
        )
    paths = sorted(split_dir.glob(SHARD_PATTERN))
    if not paths:
        raise TokenDataError(
            f"{split_dir} holds no {SHARD_PATTERN} files: the split is empty "
            "(build the shards with `lmforge shards build`)"
        )
    check_against_manifest(split_dir, paths, verify)
    shards, vocab_sizes, eot_ids = [], set(), set()
    for path in paths:
        tokens, vocab_size, eot_id = read_shard_tokens(path)
        shards.append(tokens)
        vocab_sizes.add(vocab_size)
        eot_ids.add(eot_id)
    if len(vocab_sizes) > 1 or len(eot_ids) > 1:
        raise TokenDataError(
            f"the shards of {split_dir} disagree on vocab_size {sorted(vocab_sizes)} or eot_id "
            f"{sorted(eot_ids)}: they were built with different tokenizers"
        )
    split = TokenSplit(shards, paths, vocab_sizes.pop(), eot_ids.pop())
    recorded = _manifest_vocab_size(split_dir.parent)
    if recorded is not None and recorded != split.vocab_size:
        raise TokenDataError(
            f"the shards of {split_dir} were written for vocab_size={split.vocab_size} but "
            f"{split_dir.parent / MANIFEST_NAME} records a tokenizer of {recorded} tokens: "
            "shards and tokenizer do not belong together; rebuild the shards"
        )
    return split


def check_against_manifest(split_dir: Path, paths: list[Path], verify: bool) -> None:
    """Compare a split's shard files (and, with `verify`, the tokenizer) with the manifest of the
    shards directory that holds it; a split outside a finished shards directory is not checked."""
    shards_dir = split_dir.parent
    manifest_path = shards_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return
    manifest = json.loads(manifest_path.read_text())
    listed = {
        shards_dir / entry["path"]: entry
        for entry in manifest.get("outputs", [])
        if Path(entry["path"]).parent.name == split_dir.name
        and Path(entry["path"]).match(SHARD_PATTERN)
    }
    if not listed:
        return
    missing = sorted(set(listed) - set(paths))
    if missing:
        raise TokenDataError(f"{missing[0]} is listed in {manifest_path} but missing")
    for path in paths:
        entry = listed.get(path)
        if entry is None:
            raise TokenDataError(
                f"{path} is not listed in {manifest_path}: it was not written by this build; "
                "remove it or rebuild the shards"
            )
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise TokenDataError(
                f"{path} is corrupt: it has {size} bytes, {manifest_path} records {entry['bytes']}"
            )
        if verify and sha256_file(path) != entry["sha256"]:
            raise TokenDataError(
                f"{path} is corrupt: its sha256 does not match {manifest_path}; rebuild the shards"
            )
    tokenizer_path = shards_dir / TOKENIZER_FILE
    recorded = (manifest.get("tokenizer") or {}).get("sha256")
    if verify and recorded and tokenizer_path.is_file() and sha256_file(tokenizer_path) != recorded:
        raise TokenDataError(
            f"{tokenizer_path} is not the tokenizer the shards were built with (its sha256 "
            f"differs from {manifest_path}): restore it or rebuild the shards"
        )


def _manifest_vocab_size(shards_dir: Path) -> int | None:
    manifest_path = shards_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    tokenizer = json.loads(manifest_path.read_text()).get("tokenizer") or {}
    return int(tokenizer["vocab_size"]) if "vocab_size" in tokenizer else None


def shards_vocab_size(shards_dir: str | Path, split: TokenSplit) -> int:
    """The vocabulary size from `SHARDS/manifest.json` (`tokenizer.vocab_size`), falling back to
    the shards' schema metadata when the manifest does not record it."""
    recorded = _manifest_vocab_size(Path(shards_dir))
    return split.vocab_size if recorded is None else recorded


def sequential_windows(
    split: TokenSplit, seq_len: int, max_tokens: int | None = None
) -> Iterator[np.ndarray]:
    """Windows of seq_len + 1 tokens from the split's start, for evaluation.

    Window i holds tokens [i·seq_len, i·seq_len + seq_len + 1): the inputs are its first seq_len
    tokens and the targets its last seq_len, so consecutive windows share one boundary token and
    every target token is scored exactly once. `max_tokens` caps the targets scored (a multiple
    of seq_len is used). Raises ValueError when the split cannot fill a single window.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    count = (split.num_tokens - 1) // seq_len
    if max_tokens is not None:
        count = min(count, max_tokens // seq_len)
    if count < 1:
        raise ValueError(
            f"the split has {split.num_tokens} tokens, fewer than one window of {seq_len + 1}"
            + (f" within max_tokens={max_tokens}" if max_tokens is not None else "")
        )
    return (split.window(i * seq_len, seq_len + 1) for i in range(count))


class TrainBatches:
    """Random training windows whose order is a pure function of (seed, step, rank, world_size).

    The split is cut into non-overlapping windows of seq_len + 1 tokens (adjacent windows share
    one boundary token). Each epoch visits all of them in a permutation seeded by (seed, epoch);
    the epochs are laid end to end as one stream, and step s consumes the global batch at stream
    positions [s·G, (s+1)·G) with G = batch_size·world_size, rank r taking the r-th slice of
    batch_size windows. So ranks never overlap, any step can be recomputed for an exact resume,
    and a run may change its world size as long as the global batch stays the same.
    (numpy's Generator may change its streams across numpy releases: pin numpy to resume.)
    """

    def __init__(
        self,
        split: TokenSplit,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(
                f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        self.split = split
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_windows = (split.num_tokens - 1) // seq_len
        if self.num_windows < 1:
            raise ValueError(
                f"the training split has {split.num_tokens} tokens, fewer than one window of "
                f"seq_len + 1 = {seq_len + 1}: use more data or a shorter seq_len"
            )
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def epoch(self, step: int) -> float:
        """Passes over the split completed before `step` (fractional)."""
        return step * self.global_batch_size / self.num_windows

    def window_indices(self, step: int) -> np.ndarray:
        """Indices of the windows that this rank trains on at `step` (int64, batch_size)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        first = step * self.global_batch_size + self.rank * self.batch_size
        positions = np.arange(first, first + self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_windows)
        indices = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):  # one epoch, or two where the batch straddles a boundary
            chosen = epochs == epoch
            indices[chosen] = self._permutation(int(epoch))[offsets[chosen]]
        return indices

    def windows(self, step: int) -> np.ndarray:
        """This rank's windows at `step`: int64 [batch_size, seq_len + 1], ready for torch.

        Raises TokenDataError naming the shard when a token id is outside the vocabulary (a
        damaged shard that was opened without `verify`), before it reaches an embedding lookup.
        """
        length = self.seq_len + 1
        windows = np.empty((self.batch_size, length), dtype=np.int64)
        for row, index in zip(windows, self.window_indices(step), strict=True):
            row[:] = self.split.window(int(index) * self.seq_len, length)  # casts while copying
        if windows.max() >= self.split.vocab_size:
            row, column = np.unravel_index(int(windows.argmax()), windows.shape)
            position = int(self.window_indices(step)[row]) * self.seq_len + int(column)
            path = self.split.paths[self.split.shard_index(position)]
            raise TokenDataError(
                f"{path} holds token id {windows.max()} at split position {position}, outside "
                f"the vocabulary of {self.split.vocab_size}: the shard is damaged; rebuild it"
            )
        return windows

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, int64 tensors [batch_size, seq_len] on the CPU: the targets are
        the inputs shifted by one token."""
        tokens = torch.from_numpy(self.windows(step))
        return tokens[:, :-1], tokens[:, 1:]

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 2:  # a batch spans at most a few epochs; keep memory flat
                self._permutations.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._permutations[epoch] = rng.permutation(self.num_windows)
        return self._permutations[epoch]

    def state_dict(self) -> dict[str, Any]:
        """What fixes the batch order. There is no cursor: the trainer's step is the position."""
        return {
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "num_tokens": self.split.num_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check that this loader replays the saved one's order; raise ValueError naming what
        changed (a rebuilt split, another seed or batch geometry) when it cannot."""
        mine = self.state_dict()
        changed = {k: (state.get(k), mine[k]) for k in mine if state.get(k) != mine[k]}
        if changed:
            details = ", ".join(f"{k}: saved {old}, now {new}" for k, (old, new) in changed.items())
            raise ValueError(
                f"the training data order cannot be resumed exactly ({details}); "
                "resume with the same shards and batch settings, or start a new run"
            )
