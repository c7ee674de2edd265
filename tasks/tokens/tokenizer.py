"""Byte-level BPE tokenizer: draw its training sample across languages, train it, load a saved
one, encode documents.

Every byte is in the initial alphabet, so any UTF-8 text encodes without an unknown token and
decodes back to exactly the same text. Two special tokens exist: `<|endoftext|>` (id 0), which
ends every document in the token stream, and `<|pad|>` (id 1), which fills batches of unequal
length. Documents never produce special tokens from their text: a page that literally contains
"<|endoftext|>" is tokenized as ordinary characters.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from tokenizers import Encoding, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.errors import LmforgeError
from lmforge.manifest import sha256_file

EOT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOT_TOKEN, PAD_TOKEN)  # in id order: EOT is 0, PAD is 1


class TokenizerError(LmforgeError, ValueError):
    """A tokenizer file is missing, unreadable, or lacks lmforge's special tokens."""


@dataclass(frozen=True)
class TokenizerConfig:
    """How to train the BPE vocabulary.

    vocab_size counts the 256 byte tokens and the two special tokens; a corpus too small to
    supply enough merges yields a smaller vocabulary (the tokenizer reports its real size).
    min_frequency: a pair must occur at least this often to become a merge.
    """

    vocab_size: int = 8192
    min_frequency: int = 2

    def __post_init__(self) -> None:
        minimum = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
        if self.vocab_size < minimum:
            raise ValueError(
                f"vocab_size={self.vocab_size} is too small: a byte-level BPE needs at least "
                f"{minimum} tokens (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
            )
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency must be at least 1, got {self.min_frequency}")


@dataclass(frozen=True)
class SpecialTokenIds:
    eot_id: int
    pad_id: int


def to_valid_utf8(text: str) -> str:
    """Return `text` as a string that encodes to valid UTF-8.

    Pages decoded with the wrong codec, or JSON with broken escapes, can leave lone surrogates
    (U+D800..U+DFFF) in a Python string; the tokenizer rejects them and they have no UTF-8 form.
    A high+low surrogate pair that was split into two code points is joined back into the
    character it encodes; a lone surrogate becomes U+FFFD. Valid text is returned unchanged.
    This is the one place lmforge repairs text before tokenizing or counting bytes.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # UTF-16 can carry surrogates with surrogatepass; decoding it pairs what pairs up and
        # replaces the rest.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


@dataclass(frozen=True)
class LanguageSampling:
    """Which documents the tokenizer trains on, so that one dominant language does not take
    over the vocabulary.

    Language l, with B_l bytes of text, gets a target share q_l of the sample: `weights[l]`
    normalised when weights are given (a language they do not list is left out), else
    q_l proportional to B_l^(1/temperature): temperature 1 keeps the data's mix, larger values
    flatten it toward one share per language (mT5 and XLM-R train on 1/temperature = 0.3-0.7).
    The sample holds min(max_bytes, all bytes); a share is filled by drawing a subset of the
    language's documents, or, for a small language, by repeating them up to `max_repeats` times.
    A share that cannot be filled is given to the other languages. Which documents are drawn
    is a pure function of their ids and `seed` (see `document_copies`).
    """

    temperature: float = 3.0
    weights: Mapping[str, float] | None = None
    max_bytes: int = 1 << 28
    max_repeats: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"language temperature must be positive, got {self.temperature}")
        if self.max_bytes < 1:
            raise ValueError(f"tokenizer sample max_bytes must be positive, got {self.max_bytes}")
        if self.max_repeats < 1:
            raise ValueError(f"max_repeats must be at least 1, got {self.max_repeats}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"tokenizer sample seed must be in 0..2**64-1, got {self.seed}")
        if self.weights is not None:
            bad = {k: w for k, w in self.weights.items() if not (math.isfinite(w) and w >= 0)}
            if bad:
                raise ValueError(f"language weights must be finite and >= 0, got {bad}")
            if not any(w > 0 for w in self.weights.values()):
                raise ValueError(f"language weights {dict(self.weights)} give no language a share")

    def rates(self, bytes_by_language: Mapping[str, int]) -> dict[str, float]:
        """Expected copies of each document of every language in the sample: 0 leaves the
        language out, 0.25 draws one document in four, 3.0 repeats each three times.

        Raises ValueError when no language with text has a positive weight."""
        present = {lang: size for lang, size in bytes_by_language.items() if size > 0}
        if self.weights is None:
            shares = {lang: size ** (1 / self.temperature) for lang, size in present.items()}
        else:
            shares = {lang: float(self.weights.get(lang, 0.0)) for lang in present}
            if not any(shares.values()):
                raise ValueError(
                    f"language weights {dict(self.weights)} name none of the languages with "
                    f"text ({', '.join(sorted(present))})"
                )
        budget = float(min(self.max_bytes, sum(present.values())))
        sampled = fill_shares(
            budget,
            {lang: share for lang, share in shares.items() if share > 0},
            {lang: self.max_repeats * size for lang, size in present.items()},
        )
        return {lang: sampled.get(lang, 0.0) / size for lang, size in present.items()}

    def copies(self, doc_id: str, rate: float) -> int:
        """How many times the document `doc_id` enters the sample at its language's rate."""
        return document_copies(doc_id, rate, self.seed)


def fill_shares(
    budget: float, shares: Mapping[str, float], capacity: Mapping[str, float]
) -> dict[str, float]:
    """Split `budget` in proportion to `shares`, no key getting more than its `capacity`: a key
    that would overflow is filled to capacity and the rest is split again among the others."""
    filled: dict[str, float] = {}
    open_keys = dict(shares)
    while open_keys and budget > 0:
        total = sum(open_keys.values())
        full = [k for k, share in open_keys.items() if budget * share / total >= capacity[k]]
        if not full:
            filled.update({k: budget * share / total for k, share in open_keys.items()})
            break
        for key in full:
            filled[key] = float(capacity[key])
            budget -= capacity[key]
            del open_keys[key]
    return filled


def document_copies(doc_id: str, rate: float, seed: int, purpose: bytes = b"lmforge/sample") -> int:
    """How many times a document enters a sample at `rate` expected copies: floor(rate), plus
    one more with probability frac(rate), drawn from a seeded hash of its id so that the choice
    is reproducible and does not change when other documents are added. `purpose` keeps the
    draws of different samples (the tokenizer's, a mix's) independent."""
    whole = math.floor(rate)
    salt = seed.to_bytes(16, "big")
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8, person=purpose, salt=salt)
    uniform = int.from_bytes(digest.digest(), "big") / 2**64
    return whole + (uniform < rate - whole)


def _with_document_behaviour(tokenizer: Tokenizer) -> Tokenizer:
    # Special-token strings inside a document are text, not control tokens; this flag is not
    # saved in tokenizer.json, so every tokenizer lmforge builds or loads sets it here.
    tokenizer.encode_special_tokens = True
    return tokenizer


def train_tokenizer(
    texts: Iterable[str], config: TokenizerConfig = TokenizerConfig(), length: int | None = None
) -> Tokenizer:
    """Train a byte-level BPE on `texts` (any iterable; consumed once, streamed).

    Texts are repaired with `to_valid_utf8` first. `length` (the number of texts, if known) only
    feeds the trainer's progress estimate. Returns a tokenizer whose special tokens have ids
    0 (`<|endoftext|>`) and 1 (`<|pad|>`).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((to_valid_utf8(t) for t in texts), trainer, length=length)
    special_token_ids(tokenizer)  # the trainer places them at 0 and 1; fail loudly if not
    return _with_document_behaviour(tokenizer)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a `tokenizer.json`; raise TokenizerError if it is missing, unreadable, or lacks
    `<|endoftext|>` / `<|pad|>`."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {path} does not exist")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a bare Exception for bad JSON
        raise TokenizerError(f"{path} is not a readable tokenizers JSON file: {error}") from error
    try:
        special_token_ids(tokenizer)
    except TokenizerError as error:
        raise TokenizerError(f"{path}: {error}") from error
    return _with_document_behaviour(tokenizer)


def special_token_ids(tokenizer: Tokenizer) -> SpecialTokenIds:
    """The ids of `<|endoftext|>` and `<|pad|>`; TokenizerError if either is absent."""
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        raise TokenizerError(
            f"tokenizer has no {', '.join(missing)} token: train it with lmforge "
            "(lmforge shards build) or add the special tokens"
        )
    return SpecialTokenIds(eot_id=ids[EOT_TOKEN], pad_id=ids[PAD_TOKEN])


def tokenizer_vocab_size(tokenizer: Tokenizer) -> int:
    """Number of token ids, special tokens included: ids lie in [0, vocab_size)."""
    return tokenizer.get_vocab_size(with_added_tokens=True)


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text followed by `<|endoftext|>`, encoded in parallel (Rust threads).

    Texts must already be valid UTF-8 (see `to_valid_utf8`); the tokenizer must come from
    `train_tokenizer` or `load_tokenizer` so special-token strings in the text stay text.
    """
    eot_id = special_token_ids(tokenizer).eot_id
    # encode_batch_fast skips the character offsets, which sharding never uses.
    return [encoding.ids + [eot_id] for encoding in tokenizer.encode_batch_fast(texts)]


def flatten_encodings(
    encodings: list[Encoding], eot_id: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Encodings' ids, each followed by `eot_id`, in one `dtype` array, and their lengths.

    Copies the ids into numpy once, without a Python list per document with the EOT appended.
    """
    ids = [encoding.ids for encoding in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return np.insert(flat, np.cumsum(lengths), eot_id), lengths + 1


def decode_document(tokenizer: Tokenizer, ids: Iterable[int]) -> str:
    """The text of one document's ids; a trailing `<|endoftext|>` is dropped, others are kept."""
    ids = list(ids)
    eot_id = special_token_ids(tokenizer).eot_id
    if ids and ids[-1] == eot_id:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


def tokenizer_sha256(path: str | Path) -> str:
    """The sha256 of a saved tokenizer file: what manifests record to tie shards, models and
    evaluations to one vocabulary."""
    return sha256_file(path)
