"""Zero-/few-shot benchmarks read from their published files, as lm-evaluation-harness frames them.

Every task becomes a list of `BenchmarkItem`s: a context, the candidate continuations and the
index of the right one. Prompts follow lm-eval's task configs (`Question: ...\\nAnswer:` for ARC
and PIQA, HellaSwag's bracket clean-up, LAMBADA's last word), so scores are comparable.
Scoring lives in `tasks/evaluate/benchmarks.py`; fetching files or URLs in `tasks/evaluate/benchmark_sources.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.tasks.jsonl import read_jsonl


class BenchmarkFormatError(LmforgeError, ValueError):
    """A benchmark file that is not in its task's published format; the message names file+line."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One question: `context` is followed by `target_delimiter` + one of `choices`."""

    context: str
    choices: tuple[str, ...]
    gold: int
    target_delimiter: str = " "

    def continuation(self, choice: int) -> str:
        return self.target_delimiter + self.choices[choice]


def field(record: dict[str, Any], key: str, where: str, kind: type = str) -> Any:
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BenchmarkFormatError(f"{where}: needs a {kind.__name__} field {key!r}")
    return value


def clean_hellaswag(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: WikiHow's ` [title]` becomes a sentence break, other
    bracketed markers (`[header]`, `[step]`) are dropped, doubled spaces collapse."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path: Path) -> list[BenchmarkItem]:
    """HellaSwag's jsonl (rowanz/hellaswag `data/hellaswag_{train,val}.jsonl`): `activity_label`,
    `ctx_a`, `ctx_b`, 4 `endings`, `label`. Prompt: `activity: ctx_a Ctx_b` -> ending."""
    items = []
    for number, record in read_jsonl(path, BenchmarkFormatError):
        where = f"{path}:{number}"
        endings = field(record, "endings", where, list)
        label = record.get("label")
        if not isinstance(label, (int, str)) or not str(label).isdigit():
            raise BenchmarkFormatError(f"{where}: needs an integer field 'label' (0-3)")
        context = field(record, "ctx_a", where) + " " + field(record, "ctx_b", where).capitalize()
        query = clean_hellaswag(field(record, "activity_label", where) + ": " + context)
        items.append(checked(where, query, tuple(clean_hellaswag(e) for e in endings), int(label)))
    return non_empty(path, items)


def load_arc(path: Path) -> list[BenchmarkItem]:
    """ARC's jsonl (ARC-V1-Feb2018 `ARC-{Easy,Challenge}-{Train,Dev,Test}.jsonl`):
    `question.stem`, `question.choices[{text,label}]`, `answerKey` (a letter or a digit)."""
    items = []
    for number, record in read_jsonl(path, BenchmarkFormatError):
        where = f"{path}:{number}"
        question = field(record, "question", where, dict)
        choices = field(question, "choices", f"{where} question", list)
        labels = [str(c.get("label")) for c in choices if isinstance(c, dict)]
        texts = tuple(field(c, "text", f"{where} choice", str) for c in choices)
        answer = str(field(record, "answerKey", where))
        if answer not in labels:
            raise BenchmarkFormatError(f"{where}: answerKey {answer!r} is none of {labels}")
        context = f"Question: {field(question, 'stem', f'{where} question')}\nAnswer:"
        items.append(checked(where, context, texts, labels.index(answer)))
    return non_empty(path, items)


def piqa_labels_name(name: str) -> str:
    """PIQA keeps answers in a sibling file: `valid.jsonl` -> `valid-labels.lst`."""
    return name.removesuffix(".jsonl") + "-labels.lst"


def load_piqa(path: Path) -> list[BenchmarkItem]:
    """PIQA's `{train,valid}.jsonl` (`goal`, `sol1`, `sol2`) with the `-labels.lst` beside it
    (one 0/1 per line). Prompt: `Question: goal\\nAnswer:` -> solution."""
    labels_path = path.with_name(piqa_labels_name(path.name))
    if not labels_path.is_file():
        raise FileNotFoundError(
            f"PIQA answers {labels_path} are missing: the published data puts them beside "
            f"{path.name} (e.g. valid.jsonl and valid-labels.lst)"
        )
    labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
    records = list(read_jsonl(path, BenchmarkFormatError))
    if len(labels) != len(records):
        raise BenchmarkFormatError(
            f"{labels_path} has {len(labels)} labels but {path} has {len(records)} questions"
        )
    items = []
    for (number, record), label in zip(records, labels, strict=True):
        where = f"{path}:{number}"
        context = f"Question: {field(record, 'goal', where)}\nAnswer:"
        solutions = (field(record, "sol1", where), field(record, "sol2", where))
        if label not in ("0", "1"):
            raise BenchmarkFormatError(f"{labels_path}: label {label!r} is not 0 or 1")
        items.append(checked(where, context, solutions, int(label)))
    return non_empty(path, items)


def load_lambada(path: Path) -> list[BenchmarkItem]:
    """LAMBADA (OpenAI's `lambada_test.jsonl`, `{"text": ...}`): the passage without its last
    word is the context, `" " + last word` the one continuation."""
    items = []
    for number, record in read_jsonl(path, BenchmarkFormatError):
        where = f"{path}:{number}"
        context, space, word = field(record, "text", where).strip().rpartition(" ")
        if not space:
            raise BenchmarkFormatError(f"{where}: a passage needs at least two words")
        items.append(BenchmarkItem(context=context, choices=(word,), gold=0))
    return non_empty(path, items)


def checked(where: str, context: str, choices: tuple[str, ...], gold: int) -> BenchmarkItem:
    if len(choices) < 2:
        raise BenchmarkFormatError(f"{where}: needs at least two choices")
    if not 0 <= gold < len(choices):
        raise BenchmarkFormatError(f"{where}: answer {gold} is not one of {len(choices)} choices")
    return BenchmarkItem(context=context, choices=choices, gold=gold)


def non_empty(path: Path, items: list[BenchmarkItem]) -> list[BenchmarkItem]:
    if not items:
        raise BenchmarkFormatError(f"{path} holds no benchmark items")
    return items


@dataclass(frozen=True)
class BenchmarkTask:
    """A task: how to read its file, its public download, and how it is scored."""

    name: str
    load: Callable[[Path], list[BenchmarkItem]]
    url: str  # `URL#member` names a file inside a zip archive
    kind: str = "multiple_choice"  # or "last_word": accuracy of the greedy continuation + ppl
    # Names of files published beside the main one that the loader also reads.
    sidecars: Callable[[str], list[str]] = lambda name: []


ARC_ZIP = "https://ai2-public-datasets.s3.amazonaws.com/arc/ARC-V1-Feb2018.zip"
TASKS: dict[str, BenchmarkTask] = {
    task.name: task
    for task in (
        BenchmarkTask(
            "hellaswag",
            load_hellaswag,
            "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",
        ),
        BenchmarkTask(
            "arc_easy", load_arc, f"{ARC_ZIP}#ARC-V1-Feb2018-2/ARC-Easy/ARC-Easy-Test.jsonl"
        ),
        BenchmarkTask(
            "arc_challenge",
            load_arc,
            f"{ARC_ZIP}#ARC-V1-Feb2018-2/ARC-Challenge/ARC-Challenge-Test.jsonl",
        ),
        BenchmarkTask(
            "piqa",
            load_piqa,
            "https://yonatanbisk.com/piqa/data/valid.jsonl",
            sidecars=lambda name: [piqa_labels_name(name)],
        ),
        BenchmarkTask(
            "lambada",
            load_lambada,
            "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl",
            kind="last_word",
        ),
    )
}


def benchmark_task(name: str) -> BenchmarkTask:
    """The task called `name`; ValueError listing the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown benchmark {name!r}: choose from {', '.join(TASKS)}")
    return TASKS[name]
