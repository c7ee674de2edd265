"""Fine-tuning data: labelled texts for classification, instructions for supervised fine-tuning.

Files are CSV (with a header row) or JSONL (one JSON object per line). Instruction records are
either Alpaca-style `{"instruction", "input", "output"}` (`input` optional) or chat-style
`{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`. Both render through
one prompt template (`PROMPT_TEMPLATE`); the loss is taken only on response tokens: every other
target is IGNORE_INDEX, which `torch.nn.functional.cross_entropy` skips.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from lmforge.errors import LmforgeError
from lmforge.tasks.jsonl import read_jsonl, utf8_lines
from lmforge.tasks.tokens.tokenizer import special_token_ids, to_valid_utf8

IGNORE_INDEX = -100
SUFFIXES = (".csv", ".jsonl", ".json")

# The one prompt template of lmforge's instruction tuning (shown in the README):
#
#   ### Instruction:
#   {instruction}
#
#   ### Input:            <- only when the record has a non-empty input
#   {input}
#
#   ### Response:
#   {output}<|endoftext|>
#
# Chat messages use the same headers: system -> "### System:", user -> "### Instruction:",
# assistant -> "### Response:"; every assistant turn is trained on, each ending in <|endoftext|>.
PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
ROLE_HEADERS = {
    "system": "### System:\n",
    "user": "### Instruction:\n",
    "assistant": "### Response:\n",
}


class FinetuneDataError(LmforgeError, ValueError):
    """A fine-tuning file that is missing, unreadable, or holds a record that cannot be used."""


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered instruction example; only `trained` segments carry loss."""

    text: str
    trained: bool


@dataclass(frozen=True)
class TokenizedExample:
    """Model inputs and next-token targets of equal length; IGNORE_INDEX targets carry no loss."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


# --- reading files -------------------------------------------------------------------------------


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each record of a CSV or JSONL file; blank JSONL lines are skipped.

    Raises FinetuneDataError naming the file (and line) for a missing file, an unknown suffix,
    text that is not UTF-8, invalid JSON, or a JSON line that is not an object.
    """
    path = Path(path)
    if path.is_dir():
        raise FinetuneDataError(f"{path} is a folder: give a .csv or .jsonl fine-tuning data file")
    if not path.is_file():
        raise FinetuneDataError(f"fine-tuning data file {path} does not exist")
    if path.suffix.lower() not in SUFFIXES:
        raise FinetuneDataError(
            f"{path}: unsupported file type {path.suffix!r}; use .csv (with a header row) or .jsonl"
        )
    if path.suffix.lower() == ".csv":
        # Line endings kept, as csv wants them (quoted fields may span lines).
        reader = csv.DictReader(line for _, line in utf8_lines(path, FinetuneDataError))
        for row in reader:
            yield reader.line_num, row
        return
    yield from read_jsonl(path, FinetuneDataError)


def _text_field(where: str, record: dict[str, Any], name: str, required: bool) -> str:
    """`record[name]` as text; `where` ("file:line") prefixes the error for a bad value."""
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            fields = ", ".join(sorted(map(str, record))) or "none"
            raise FinetuneDataError(
                f"{where}: missing or empty field {name!r} (fields present: {fields})"
            )
        return ""
    if isinstance(value, (dict, list)):
        raise FinetuneDataError(f"{where}: field {name!r} must be text, not {type(value).__name__}")
    return to_valid_utf8(str(value))


def load_labelled_texts(
    path: str | Path, text_field: str = "text", label_field: str = "label"
) -> list[LabelledText]:
    """Labelled texts from a CSV or JSONL file; labels are kept as strings (`1` and `"1"` agree).

    Raises FinetuneDataError naming file and line for a record without text or label, and for a
    file with no records.
    """
    path = Path(path)
    examples = [
        LabelledText(
            _text_field(f"{path}:{number}", record, text_field, required=True),
            _text_field(f"{path}:{number}", record, label_field, required=True).strip(),
        )
        for number, record in read_records(path)
    ]
    if not examples:
        raise FinetuneDataError(f"{path} holds no records")
    return examples


def load_instruction_records(path: str | Path) -> list[list[Segment]]:
    """Instruction examples from JSONL (or CSV with instruction/input/output columns), each
    rendered with the prompt template into segments. Raises FinetuneDataError naming file and
    line for a record that is neither Alpaca-style nor chat-style, or a chat without a reply."""
    path = Path(path)
    examples = [render_record(record, f"{path}:{number}") for number, record in read_records(path)]
    if not examples:
        raise FinetuneDataError(f"{path} holds no records")
    return examples


# --- the prompt template -------------------------------------------------------------------------


def render_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt for an Alpaca-style instruction, ending where the response begins."""
    input_block = f"### Input:\n{input_text}\n\n" if input_text.strip() else ""
    return PROMPT_TEMPLATE.format(instruction=instruction, input_block=input_block)


def render_record(record: dict[str, Any], where: str = "record") -> list[Segment]:
    """Prompt and response segments of one Alpaca-style or chat-style record; the response ends
    in `<|endoftext|>`, which is appended as a token id at tokenization, not as text."""
    if "messages" in record:
        return render_messages(record["messages"], where)
    if "instruction" in record and "output" in record:
        instruction = _text_field(where, record, "instruction", required=True)
        output = _text_field(where, record, "output", required=True)
        input_text = _text_field(where, record, "input", required=False)
        return [Segment(render_prompt(instruction, input_text), False), Segment(output, True)]
    fields = ", ".join(sorted(map(str, record))) or "none"
    raise FinetuneDataError(
        f"{where}: not an instruction record: expected 'instruction' and 'output' (Alpaca) or "
        f"'messages' (chat); fields present: {fields}"
    )


def render_messages(messages: Any, where: str) -> list[Segment]:
    if not isinstance(messages, list) or not messages:
        raise FinetuneDataError(f"{where}: 'messages' must be a non-empty list of messages")
    segments: list[Segment] = []
    pending = ""  # prompt text accumulated since the last assistant turn
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLE_HEADERS or not isinstance(content, str):
            raise FinetuneDataError(
                f"{where}: message {index} must be an object with 'role' "
                f"({', '.join(ROLE_HEADERS)}) and text 'content'"
            )
        content = to_valid_utf8(content)
        if role == "assistant":
            segments.append(Segment(pending + ROLE_HEADERS["assistant"], False))
            segments.append(Segment(content, True))
            pending = "\n\n"  # separates the <|endoftext|> of this reply from the next turn
        else:
            pending += f"{ROLE_HEADERS[role]}{content}\n\n"
    if not any(segment.trained for segment in segments):
        raise FinetuneDataError(f"{where}: the conversation has no assistant message to learn from")
    return segments


def prompt_of(segments: Sequence[Segment]) -> str:
    """The text before the first response: what a model is given at generation time."""
    prompt = []
    for segment in segments:
        if segment.trained:
            break
        prompt.append(segment.text)
    return "".join(prompt)


def reference_of(segments: Sequence[Segment]) -> str:
    """The first response of an example (the reference answer for its prompt)."""
    return next(segment.text for segment in segments if segment.trained)


# --- tokenization, masks and packing -------------------------------------------------------------


def tokenize_example(
    tokenizer: Tokenizer, segments: Sequence[Segment], max_tokens: int
) -> TokenizedExample | None:
    """Inputs and targets of one rendered example, at most `max_tokens` long.

    Each trained segment is followed by `<|endoftext|>`, which is trained too (the model learns
    to stop). Targets of prompt tokens are IGNORE_INDEX. An example cut so short that no
    response token is left returns None.
    """
    eot_id = special_token_ids(tokenizer).eot_id
    tokens: list[int] = []
    trained: list[bool] = []
    for segment in segments:
        ids = tokenizer.encode(segment.text).ids
        if segment.trained:
            ids = ids + [eot_id]
        tokens += ids
        trained += [segment.trained] * len(ids)
    tokens, trained = tokens[: max_tokens + 1], trained[: max_tokens + 1]
    labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(tokens[1:], trained[1:])]
    example = TokenizedExample(tokens[:-1], labels)
    return example if example.trained_tokens else None


def pack_examples(examples: Sequence[TokenizedExample], seq_len: int) -> list[TokenizedExample]:
    """Concatenate consecutive examples into rows of at most `seq_len` tokens (no example is
    split), so short examples do not waste a row of padding each.

    Packed examples attend to the ones before them in their row; each starts after the previous
    response's `<|endoftext|>`, as documents do in pretraining.
    """
    rows: list[TokenizedExample] = []
    inputs: list[int] = []
    labels: list[int] = []
    for example in examples:
        if len(example.input_ids) > seq_len:
            raise ValueError(
                f"an example of {len(example.input_ids)} tokens exceeds seq_len={seq_len}"
            )
        if inputs and len(inputs) + len(example.input_ids) > seq_len:
            rows.append(TokenizedExample(inputs, labels))
            inputs, labels = [], []
        inputs = inputs + example.input_ids
        labels = labels + example.labels
    if inputs:
        rows.append(TokenizedExample(inputs, labels))
    return rows


def pad_batch(
    rows: Sequence[TokenizedExample], pad_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Right-pad inputs with `pad_id` and targets with IGNORE_INDEX to the longest row."""
    width = max(len(row.input_ids) for row in rows)
    inputs = [row.input_ids + [pad_id] * (width - len(row.input_ids)) for row in rows]
    labels = [row.labels + [IGNORE_INDEX] * (width - len(row.labels)) for row in rows]
    return inputs, labels
