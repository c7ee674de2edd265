"""How many of a variant's training documents repeat a held-out document's text.

Documents go to val by a hash of their id, so no variant trains on a held-out document itself;
but a variant that keeps duplicates keeps the copies of a held-out page found at other URLs, and
those fall into train. Its held-out loss then flatters it. The count of exact copies (text
compared after lower-casing and collapsing whitespace) says how much; near-duplicates are not
counted, so it is a lower bound.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from lmforge.tasks.tokens.shards import (
    document_files,
    is_validation_document,
    iter_document_batches,
)

BATCH_DOCUMENTS = 4096


def text_digest(text: str) -> bytes:
    """A document's text up to case and whitespace."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


def split_digests(data_dir: str | Path, val_fraction: float, split: str) -> list[bytes]:
    """The text digests of a data-stage directory's documents in `split` ("train" or "val", by
    the id hash build_shards splits with)."""
    digests = []
    for batch in iter_document_batches(document_files(data_dir), BATCH_DOCUMENTS):
        for doc_id, text in zip(batch.ids, batch.texts, strict=True):
            in_val = is_validation_document(doc_id, val_fraction)
            if in_val == (split == "val"):
                digests.append(text_digest(text))
    return digests


def heldout_copies(heldout: Iterable[bytes], train: Iterable[bytes]) -> int:
    """How many of the `train` digests are a held-out document's."""
    held = set(heldout)
    return sum(1 for digest in train if digest in held)
