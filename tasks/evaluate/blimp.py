"""BLiMP minimal pairs, read from the published JSONL files (one file per paradigm).

Each line holds at least `sentence_good` and `sentence_bad`; the paradigm's name is the file's
stem (e.g. `adjunct_island.jsonl` -> `adjunct_island`). Scoring lives in `tasks/evaluate/checkpoint.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tasks.jsonl import read_jsonl


class BlimpFormatError(LmforgeError, ValueError):
    """A BLiMP directory or file cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class MinimalPair:
    good: str
    bad: str


def load_paradigm(path: str | Path) -> list[MinimalPair]:
    """The pairs of one paradigm file, in file order; blank lines are skipped.

    Raises BlimpFormatError naming the file and line for invalid JSON, a line that is not an
    object, or a missing/non-string `sentence_good`/`sentence_bad`; and for a file with no pairs.
    """
    path = Path(path)
    pairs = []
    for line_number, record in read_jsonl(path, BlimpFormatError):
        sentences = [record.get(key) for key in ("sentence_good", "sentence_bad")]
        if not all(isinstance(s, str) and s for s in sentences):
            raise BlimpFormatError(
                f"{path}:{line_number}: needs non-empty string fields "
                "sentence_good and sentence_bad"
            )
        pairs.append(MinimalPair(good=sentences[0], bad=sentences[1]))
    if not pairs:
        raise BlimpFormatError(f"{path} holds no minimal pairs")
    return pairs


def load_blimp(
    directory: str | Path, paradigms: list[str] | None = None
) -> dict[str, list[MinimalPair]]:
    """Paradigm name -> its pairs, for every `*.jsonl` in `directory` (sorted by name), or only
    for the named `paradigms`.

    Raises FileNotFoundError for a missing directory or a named paradigm without a file, and
    BlimpFormatError for a directory without JSONL files or a malformed file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"BLiMP directory {directory} does not exist")
    available = {path.stem: path for path in sorted(directory.glob("*.jsonl"))}
    if not available:
        raise BlimpFormatError(
            f"{directory} has no *.jsonl files: expected BLiMP's published files, one per paradigm"
        )
    names = sorted(available) if paradigms is None else paradigms
    if unknown := [name for name in names if name not in available]:
        raise FileNotFoundError(f"{directory} has no paradigm file for: {', '.join(unknown)}")
    return {name: load_paradigm(available[name]) for name in names}
