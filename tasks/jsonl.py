"""JSON Lines files read as (line number, object) pairs, with errors that name file and line:
benchmarks, BLiMP and fine-tuning data share one reader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_jsonl(
    path: Path, error: type[ValueError] = ValueError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; `error` naming file and line for a line
    that is not a JSON object."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as decode_error:
                message = f"{path}:{number}: not valid JSON ({decode_error.msg})"
                raise error(message) from decode_error
            if not isinstance(record, dict):
                raise error(f"{path}:{number}: expected a JSON object")
            yield number, record
