"""Streaming text generation from a trained checkpoint: token ids from a KV-cached loop, text
pieces decoded incrementally so a terminal can print each one as soon as it is known.

Byte-level BPE splits a multi-byte character (é, 中, an emoji) across several tokens; decoding
each token alone would print replacement characters. The pieces are therefore decoded from the
tokens not yet printed and held back while they end in an incomplete character, so joining every
piece gives exactly `tokenizer.decode` of all the new tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from lmforge.model.checkpoint import check_model_dir
from lmforge.model.gpt import GPT, check_sampling
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.tasks.tokens.tokenizer import special_token_ids, to_valid_utf8

_INCOMPLETE = "\ufffd"  # what the byte-level decoder yields for a character cut short


def checkpoint_tokenizer_file(checkpoint: str | Path, tokenizer: str | Path | None = None) -> Path:
    """The tokenizer.json for `checkpoint`: `tokenizer` when given, else the one in the
    checkpoint directory, else the training run's (for `OUT/checkpoints/step-NNNNNN`).

    Raises FileNotFoundError naming the places searched when there is none, or the checkpoint
    folder when it does not exist (no tokenizer could help then).
    """
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        return path
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        check_model_dir(checkpoint)  # says what the path is instead, and what to pass
    candidates = [checkpoint / TOKENIZER_FILE]
    if checkpoint.parent.name == "checkpoints":  # a resumable checkpoint inside a training output
        candidates.append(checkpoint.parent.parent / TOKENIZER_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no {TOKENIZER_FILE} for checkpoint {checkpoint} (looked at "
        f"{', '.join(str(p) for p in candidates)}): pass --tokenizer PATH"
    )


@torch.inference_mode()
def iter_new_tokens(
    model: GPT,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield up to `max_new_tokens` token ids continuing `prompt_ids`, one per forward step.

    `GPT.iter_next_tokens` for a single sequence, as ints: the same ids as `GPT.generate` for
    the same generator state, each yielded as soon as it is drawn. Stops after yielding
    `eos_id`. Past max_seq_len the context slides, re-encoding the last max_seq_len tokens.
    """
    if not prompt_ids:
        raise ValueError("the prompt must have at least one token")
    device = next(model.parameters()).device
    prompt = torch.tensor([list(prompt_ids)], device=device)
    steps = model.iter_next_tokens(
        prompt, max_new_tokens, temperature, top_k, top_p, eos_id, generator
    )
    for next_token in steps:
        yield int(next_token[0])


def decode_stream(tokenizer: Tokenizer, ids: Iterator[int] | Sequence[int]) -> Iterator[str]:
    """Text pieces of `ids`, each yielded once it ends on a complete character.

    Joined, the pieces equal `tokenizer.decode(list(ids), skip_special_tokens=False)`.
    """
    unprinted: list[int] = []
    for token_id in ids:
        unprinted.append(token_id)
        text = tokenizer.decode(unprinted, skip_special_tokens=False)
        # A complete last character is a UTF-8 boundary: what follows decodes independently.
        if text and not text.endswith(_INCOMPLETE):
            yield text
            unprinted = []
    if unprinted:  # the model stopped mid-character: show what the bytes decode to
        yield tokenizer.decode(unprinted, skip_special_tokens=False)


def stream_generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the text of a continuation of `prompt` piece by piece, stopping at `<|endoftext|>`.

    The prompt is encoded after a leading `<|endoftext|>`, as every document starts in training.
    `seed` makes sampling reproducible without touching the global random state; temperature 0
    is greedy; a prompt longer than max_seq_len is seen through its last max_seq_len tokens.
    Raises ValueError for invalid sampling settings at once, before any text is produced.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    eot_id = special_token_ids(tokenizer).eot_id
    prompt_ids = [eot_id] + tokenizer.encode(to_valid_utf8(prompt)).ids
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    new_ids = iter_new_tokens(
        model, prompt_ids, max_new_tokens, temperature, top_k, top_p, eot_id, generator
    )
    return decode_stream(tokenizer, (i for i in new_ids if i != eot_id))
