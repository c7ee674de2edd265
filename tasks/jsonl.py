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
    that is not UTF-8 or not a JSON object."""
    for number, line in utf8_lines(path, error):
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


def utf8_lines(path: Path, error: type[ValueError] = ValueError) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) of each line of a UTF-8 file; `error` naming
    file, line and byte for a line that is not UTF-8 (a text-mode read says neither)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as decode_error:
                raise error(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[decode_error.start]:02x} is "
                    f"byte {decode_error.start + 1} of the line): save the file as UTF-8"
                ) from decode_error
            yield number, line
