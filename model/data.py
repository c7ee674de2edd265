"""Token shards as one memory-mapped sequence, and the batches a training run draws from it.

A split directory holds `shard-*.arrow` files (Arrow IPC file format, schema
`doc_id: string, tokens: list<uint16|uint32>`, metadata `lmforge.vocab_size`, `lmforge.eot_id`).
Each shard's flattened `tokens` column is one contiguous buffer read straight from the memory map,
so opening a split costs no copy and training touches only the pages it samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

SHARD_PATTERN = "shard-*.arrow"
VOCAB_SIZE_KEY = b"lmforge.vocab_size"
EOT_ID_KEY = b"lmforge.eot_id"
TOKEN_TYPES = (pa.uint16(), pa.uint32())


class TokenDataError(ValueError):
    """A split directory or shard cannot be read as lmforge token shards."""


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

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as a 1-D array (read-only when it is a view)."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(
                f"window [{start}, {start + length}) is outside the split's "
                f"{self.num_tokens} tokens"
            )
        shard = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
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


def open_token_split(split_dir: str | Path) -> TokenSplit:
    """Memory-map every `shard-*.arrow` of `split_dir` (e.g. `SHARDS/train`).

    Raises TokenDataError when the directory is missing or has no shards, when a shard's schema
    or metadata is not the token-shard contract's, or when shards disagree on vocabulary.
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
    shards, vocab_sizes, eot_ids = [], set(), set()
    for path in paths:
        tokens, vocab_size, eot_id = _read_shard(path)
        shards.append(tokens)
        vocab_sizes.add(vocab_size)
        eot_ids.add(eot_id)
    if len(vocab_sizes) > 1 or len(eot_ids) > 1:
        raise TokenDataError(
            f"the shards of {split_dir} disagree on vocab_size {sorted(vocab_sizes)} or eot_id "
            f"{sorted(eot_ids)}: they were built with different tokenizers"
        )
    return TokenSplit(shards, paths, vocab_sizes.pop(), eot_ids.pop())


def _read_shard(path: Path) -> tuple[np.ndarray, int, int]:
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    except (pa.ArrowInvalid, OSError) as error:
        raise TokenDataError(f"{path} is not an Arrow IPC file: {error}") from error
    schema = reader.schema
    _check_schema(path, schema)
    metadata = schema.metadata or {}
    try:
        vocab_size, eot_id = int(metadata[VOCAB_SIZE_KEY]), int(metadata[EOT_ID_KEY])
    except (KeyError, ValueError) as error:
        raise TokenDataError(
            f"{path} lacks integer schema metadata {VOCAB_SIZE_KEY.decode()} and "
            f"{EOT_ID_KEY.decode()}: rebuild the shards with `lmforge shards build`"
        ) from error
    # flatten() honours list offsets; one record batch per shard makes this a view of the map.
    values = [chunk.flatten() for chunk in reader.read_all().column("tokens").chunks]
    if any(chunk.null_count for chunk in values):
        raise TokenDataError(f"{path} has null tokens: every token must be an integer id")
    chunks = [chunk.to_numpy(zero_copy_only=False) for chunk in values]
    if not chunks:
        value_type = schema.field("tokens").type.value_type
        return np.empty(0, dtype=value_type.to_pandas_dtype()), vocab_size, eot_id
    tokens = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return tokens, vocab_size, eot_id


def _check_schema(path: Path, schema: pa.Schema) -> None:
    doc_id = schema.field("doc_id").type if "doc_id" in schema.names else None
    tokens = schema.field("tokens").type if "tokens" in schema.names else None
    doc_id_ok = doc_id is not None and (
        pa.types.is_string(doc_id) or pa.types.is_large_string(doc_id)
    )
    tokens_ok = tokens is not None and pa.types.is_list(tokens) and tokens.value_type in TOKEN_TYPES
    if not (doc_id_ok and tokens_ok):
        found = ", ".join(f"{field.name}: {field.type}" for field in schema)
        raise TokenDataError(
            f"{path} has schema ({found}); a token shard needs "
            "doc_id: string, tokens: list<uint16> (or list<uint32> for vocabularies over 65,536)"
        )


def shards_vocab_size(shards_dir: str | Path, split: TokenSplit) -> int:
    """The vocabulary size from `SHARDS/manifest.json` (`tokenizer.vocab_size`), falling back to
    the shards' schema metadata when the manifest does not record it."""
    manifest_path = Path(shards_dir) / "manifest.json"
    if manifest_path.is_file():
        tokenizer = json.loads(manifest_path.read_text()).get("tokenizer") or {}
        if "vocab_size" in tokenizer:
            return int(tokenizer["vocab_size"])
    return split.vocab_size


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
        """Indices of the windows that this rank trains on at `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        first = step * self.global_batch_size + self.rank * self.batch_size
        positions = np.arange(first, first + self.batch_size)
        epochs, offsets = np.divmod(positions, self.num_windows)
        return np.array([self._permutation(int(e))[o] for e, o in zip(epochs, offsets)])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, int64 tensors [batch_size, seq_len] on the CPU."""
        length = self.seq_len + 1
        windows = np.stack(
            [self.split.window(int(i) * self.seq_len, length) for i in self.window_indices(step)]
        ).astype(np.int64)
        tokens = torch.from_numpy(windows)
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
