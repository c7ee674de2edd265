"""Benchmark decontamination: find documents that contain text of an evaluation benchmark, so
that the data stage can drop them (or cut the overlapping spans out) before a model sees them.

A document is contaminated when it shares an n-gram of tokens (13 by default, as in GPT-3's
decontamination; tokens are words, or characters in CJK scripts: `ngrams.tokenize`) with a
benchmark item. An item shorter than n tokens is matched as a whole when it has at least
`min_item_tokens` tokens (BLiMP's sentences are 5-12 words) and skipped, and counted, when shorter.

Benchmarks are read from their published files (`load_benchmark_texts`): BLiMP paradigms, the
HellaSwag/ARC/PIQA/LAMBADA files `lmforge eval` reads, and JSON Lines with a `text` field.
What is indexed per item is what a model could memorise: BLiMP's good and bad sentences; a
question's context alone and followed by each of its choices.

`NgramIndex` holds the sorted unique 64-bit hashes of every indexed n-gram and, beside them,
the item each came from. Matching a document hashes all its runs of each indexed length (n,
and the lengths of short items) with a few numpy operations per length, tests them against a
bit table of the grams' top bits (one gather; a binary search per run would cost several times
everything else), and looks up in the sorted array only the few runs that pass: a clean
document costs that. Hashes are 64-bit: a false match needs a collision (~1e-13 per run at a
million grams). `save` writes the arrays as `.npy` files in a stage directory; `load`
memory-maps them, so worker processes share the pages, and a loaded index pickles as its path.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.manifest import read_manifest, stage_output
from lmforge.tasks.data.ngrams import TokenRuns, Tokens, tokenize
from lmforge.tasks.evaluate.benchmark_formats import BenchmarkFormatError, benchmark_task
from lmforge.tasks.evaluate.blimp import BlimpFormatError, load_paradigm
from lmforge.tasks.jsonl import read_jsonl

STAGE = "decontamination_index"
# Bumped when tokens, hashes or files change meaning, so an older saved index is refused.
INDEX_FORMAT = 1
GRAMS_FILE, GRAM_ITEMS_FILE, ITEMS_FILE = "grams.npy", "gram_items.npy", "items.json"
FILTER_FILE = "gram_filter.npy"
# Bits of the membership filter per gram: ~3% of a clean document's runs pass it to the exact
# lookup, at 4 bytes per gram.
FILTER_BITS_PER_GRAM = 32
BENCHMARK_SUFFIXES = (".jsonl", ".json")
# Item texts are tokenized this many characters at a time: bounds the build's transient arrays.
BUILD_CHUNK_CHARS = 1 << 20
# Fields that hold a dataset's own item id (ARC `id`, HellaSwag `ind`, BLiMP `pairID`).
ID_FIELDS = ("id", "ind", "pairID")
# lm-eval's framing of ARC and PIQA questions: not text a web page would contain.
QUESTION_PROMPT = re.compile(r"Question: (.*)\nAnswer:", re.DOTALL)


class DecontaminationError(LmforgeError, ValueError):
    """A benchmark file or setting of decontamination is unusable; the message names it."""


@dataclass(frozen=True)
class BenchmarkText:
    """One text of a benchmark item (an item may have several: BLiMP's two sentences, a
    question with each of its choices)."""

    benchmark: str
    item: str
    text: str


@dataclass(frozen=True)
class Contamination:
    """Benchmark text found in a document: `text[start:end]` is the span that matched."""

    benchmark: str
    item: str
    start: int
    end: int


# --- Reading benchmark files -------------------------------------------------------------------


def load_benchmark_texts(paths: Sequence[str | Path]) -> list[BenchmarkText]:
    """The texts of every benchmark item in `paths` (files, or folders searched recursively for
    `*.jsonl`/`*.json`), recognised by their fields: BLiMP (`sentence_good`, `sentence_bad`;
    benchmark `blimp/<paradigm>`), HellaSwag (`ctx_a`, `endings`), ARC (`question`,
    `answerKey`; `arc_challenge` when the file name says Challenge), PIQA (`goal`, `sol1`, `sol2`,
    with its `-labels.lst`), LAMBADA (a `text` file named `lambada*`), else JSON Lines with a
    `text` field (benchmark: the file's stem); `.json` files are read as JSON Lines too (as
    Hugging Face datasets' `to_json` writes them). Items are named by the dataset's id field or
    `line N`. Two files giving one benchmark name get `<name>/<file stem>`.

    Raises DecontaminationError naming the path for a missing path, a folder without such files,
    a file in no known format, a malformed file or one without items.
    """
    return benchmark_file_texts(benchmark_files(paths))


def benchmark_file_texts(files: Sequence[Path]) -> list[BenchmarkText]:
    """`load_benchmark_texts` of files already found."""
    loaded = [(path, *read_benchmark_file(path)) for path in files]
    counts = Counter(name for _, name, _ in loaded)
    stems = Counter((name, path.stem) for path, name, _ in loaded)
    texts = []
    for path, name, items in loaded:
        if counts[name] > 1:
            name = f"{name}/{path.stem}" if stems[name, path.stem] == 1 else f"{name}/{path}"
        texts += [BenchmarkText(name, item, text) for item, group in items for text in group]
    return texts


def benchmark_files(paths: Sequence[str | Path]) -> list[Path]:
    """The benchmark files named by `paths`, folders expanded (sorted), each file once."""
    if not paths:
        raise DecontaminationError("no benchmark files given: name files or folders to index")
    files: dict[Path, None] = {}
    for given in paths:
        path = Path(given).expanduser()
        if path.is_file():
            files[path.resolve()] = None
        elif path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.suffix in BENCHMARK_SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )  # fmt: skip
            if not found:
                raise DecontaminationError(
                    f"benchmark folder {path} holds no *.jsonl or *.json files"
                )
            files.update((p.resolve(), None) for p in found)
        else:
            raise DecontaminationError(f"benchmark path {path} does not exist")
    return list(files)


ItemTexts = list[tuple[str, list[str]]]


def read_benchmark_file(path: Path) -> tuple[str, ItemTexts]:
    """(benchmark name, [(item id, its texts)]) of one file, its format recognised from the
    fields of its first record."""
    records = read_jsonl(path, DecontaminationError)
    first = next(records, None)
    records.close()
    if first is None:
        raise DecontaminationError(f"{path} holds no benchmark items")
    fields = set(first[1])
    try:
        if {"sentence_good", "sentence_bad"} <= fields:
            return f"blimp/{path.stem}", blimp_texts(path)
        if {"ctx_a", "endings"} <= fields:
            return "hellaswag", task_texts(path, "hellaswag")
        if {"question", "answerKey"} <= fields:
            name = "arc_challenge" if "challenge" in path.name.lower() else "arc_easy"
            return name, task_texts(path, name)
        if {"goal", "sol1", "sol2"} <= fields:
            return "piqa", task_texts(path, "piqa")
        if "text" in fields and path.stem.lower().startswith("lambada"):
            return "lambada", task_texts(path, "lambada")
        if "text" in fields:
            return path.stem, plain_texts(path)
    except (BlimpFormatError, BenchmarkFormatError, FileNotFoundError) as error:
        message = str(error)
        raise DecontaminationError(
            message if str(path) in message else f"{path}: {message}"
        ) from error
    raise DecontaminationError(
        f"{path} is in no benchmark format lmforge knows (its first record has fields "
        f"{', '.join(sorted(fields)) or 'none'}): expected BLiMP (sentence_good, sentence_bad), "
        "HellaSwag (ctx_a, endings), ARC (question, answerKey), PIQA (goal, sol1, sol2) or JSON "
        "Lines with a 'text' field"
    )


def item_id(record: dict[str, Any], line_number: int) -> str:
    for key in ID_FIELDS:
        value = record.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return f"line {line_number}"


def blimp_texts(path: Path) -> ItemTexts:
    load_paradigm(path)  # validates, with BLiMP's own messages
    return [
        (item_id(record, number), [record["sentence_good"], record["sentence_bad"]])
        for number, record in read_jsonl(path, DecontaminationError)
    ]


def task_texts(path: Path, task_name: str) -> ItemTexts:
    """A question's context alone and followed by each choice, as `lmforge eval` reads them
    (lm-eval's `Question: ...\\nAnswer:` framing taken off)."""
    items = benchmark_task(task_name).load(path)
    records = list(read_jsonl(path, DecontaminationError))
    found = []
    for (number, record), item in zip(records, items, strict=True):
        framed = QUESTION_PROMPT.fullmatch(item.context)
        context = framed.group(1) if framed else item.context
        joined = [context + item.target_delimiter + choice for choice in item.choices]
        found.append((item_id(record, number), [context, *joined]))
    return found


def plain_texts(path: Path) -> ItemTexts:
    found = []
    for number, record in read_jsonl(path, DecontaminationError):
        text = record.get("text")
        if not isinstance(text, str) or not text:
            raise DecontaminationError(f"{path}:{number}: needs a non-empty string field 'text'")
        found.append((item_id(record, number), [text]))
    if not found:
        raise DecontaminationError(f"{path} holds no benchmark items")
    return found


# --- The index ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Items:
    """Item names: `benchmarks[benchmark_of[i]]` and `ids[i]` name item i."""

    benchmarks: list[str]
    benchmark_of: list[int]
    ids: list[str]

    def to_json(self) -> bytes:
        pairs = list(zip(self.benchmark_of, self.ids, strict=True))
        return json.dumps({"benchmarks": self.benchmarks, "items": pairs}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _Items:
        loaded = json.loads(data)
        return cls(
            loaded["benchmarks"],
            [b for b, _ in loaded["items"]],
            [i for _, i in loaded["items"]],
        )


# Indexes loaded in this process by folder: unpickling one per task stays a dictionary lookup.
_LOADED: dict[Path, NgramIndex] = {}


class NgramIndex:
    """The n-grams of benchmark items, to find them in documents (see the module docstring).
    Build with `build` or `from_paths`, or `load` a saved one."""

    def __init__(
        self,
        grams: np.ndarray,
        gram_items: np.ndarray,
        gram_filter: np.ndarray,
        items: _Items,
        meta: dict[str, Any],
        directory: Path | None = None,
        sources: Sequence[Path] = (),
    ):
        self._grams = grams
        self._gram_items = gram_items
        self._filter = gram_filter
        filter_bits = (len(gram_filter) * 8).bit_length() - 1
        self._filter_shift = np.uint64(64 - filter_bits)  # a run's slot: its top filter_bits
        self._items = items
        self._meta = meta
        self._directory = directory
        self._sources = tuple(sources)
        self.n: int = meta["n"]
        self.min_item_tokens: int = meta["min_item_tokens"]
        self._lengths: tuple[int, ...] = tuple(meta["lengths"])

    @classmethod
    def build(
        cls, items: Iterable[BenchmarkText], n: int = 13, min_item_tokens: int = 8
    ) -> NgramIndex:
        """Index every n-gram of each text of `items`; a text of fewer than n tokens is one gram
        when it has at least `min_item_tokens` tokens, else skipped (counted in `stats`). A gram
        shared by several items is reported as the first of them. DecontaminationError for no
        items or settings out of range."""
        if n < 1:
            raise DecontaminationError(f"decontamination n-gram size {n} must be at least 1")
        if not 1 <= min_item_tokens <= n:
            raise DecontaminationError(
                f"min_item_tokens {min_item_tokens} must be between 1 and the n-gram size {n}"
            )
        texts = list(items)
        if not texts:
            raise DecontaminationError("no benchmark items to index")
        benchmarks: dict[str, int] = {}
        keys: dict[tuple[str, str], int] = {}
        item_of_text = np.empty(len(texts), np.int64)
        for index, text in enumerate(texts):
            benchmarks.setdefault(text.benchmark, len(benchmarks))
            item_of_text[index] = keys.setdefault((text.benchmark, text.item), len(keys))
        names = _Items(
            list(benchmarks),
            [benchmarks[benchmark] for benchmark, _ in keys],
            [item for _, item in keys],
        )
        hashes, lengths, grams_text, token_counts = [], [], [], []
        for first, last in _chunks([len(t.text) for t in texts], BUILD_CHUNK_CHARS):
            found = _text_grams([t.text for t in texts[first:last]], n, min_item_tokens)
            hashes.append(found[0])
            lengths.append(found[1])
            grams_text.append(found[2] + first)
            token_counts.append(found[3])
        all_hashes = np.concatenate(hashes)
        # np.unique keeps each hash's first occurrence: the first item that has the gram.
        grams, first_seen = np.unique(all_hashes, return_index=True)
        gram_items = item_of_text[np.concatenate(grams_text)[first_seen]].astype(np.int32)
        present_lengths = np.unique(np.concatenate(lengths)[first_seen])
        benchmark_of_item = np.array(names.benchmark_of, np.int64)
        benchmark_of_text = benchmark_of_item[item_of_text]
        skipped = np.concatenate(token_counts) < min_item_tokens
        per_benchmark = {
            "items": np.bincount(benchmark_of_item, minlength=len(benchmarks)),
            "texts": np.bincount(benchmark_of_text, minlength=len(benchmarks)),
            "skipped_short": np.bincount(benchmark_of_text[skipped], minlength=len(benchmarks)),
            "grams": np.bincount(benchmark_of_item[gram_items], minlength=len(benchmarks)),
        }
        meta = {
            "index_format": INDEX_FORMAT,
            "unicode_version": unicodedata.unidata_version,
            "n": n,
            "min_item_tokens": min_item_tokens,
            "lengths": [int(length) for length in present_lengths],
            "benchmarks": {
                name: {key: int(counts[b]) for key, counts in per_benchmark.items()}
                for name, b in benchmarks.items()
            },
        }
        meta["fingerprint"] = _fingerprint(meta, grams, gram_items, names.to_json())
        return cls(grams, gram_items, _membership_filter(grams), names, meta)

    @classmethod
    def from_paths(
        cls, paths: Sequence[str | Path], n: int = 13, min_item_tokens: int = 8
    ) -> NgramIndex:
        """`build` over the benchmark files or folders in `paths` (`load_benchmark_texts`);
        DecontaminationError naming the file for anything unreadable, before any indexing."""
        files = benchmark_files(paths)
        index = cls.build(benchmark_file_texts(files), n, min_item_tokens)
        index._sources = tuple(files)
        return index

    def save(self, directory: str | Path) -> None:
        """Write the index as a stage output (`.npy` arrays, item names, a manifest naming the
        benchmark files it was built from), atomically. OutputRefused for a folder that holds
        anything but an earlier index."""
        params = {"n": self.n, "min_item_tokens": self.min_item_tokens}
        with stage_output(directory, STAGE, params, inputs=self._sources) as stage:
            np.save(stage.path / GRAMS_FILE, self._grams)
            np.save(stage.path / GRAM_ITEMS_FILE, self._gram_items)
            np.save(stage.path / FILTER_FILE, self._filter)
            (stage.path / ITEMS_FILE).write_bytes(self._items.to_json())
            stage.counts.update(self._totals())
            stage.extra.update(self._meta)

    @classmethod
    def load(cls, directory: str | Path) -> NgramIndex:
        """A saved index, its arrays memory-mapped read-only (one copy in memory for every
        process that loads it). ManifestError when the folder is not a finished index;
        DecontaminationError when it was saved in another format or Unicode version."""
        directory = Path(directory).expanduser().resolve()
        manifest = read_manifest(directory, STAGE)
        meta = {key: manifest.get(key) for key in _META_KEYS}
        if meta["index_format"] != INDEX_FORMAT:
            raise DecontaminationError(
                f"{directory} is a decontamination index of format {meta['index_format']}, "
                f"this lmforge reads format {INDEX_FORMAT}: build it again"
            )
        if meta["unicode_version"] != unicodedata.unidata_version:
            raise DecontaminationError(
                f"{directory} was built with Unicode {meta['unicode_version']} tables, this "
                f"Python has {unicodedata.unidata_version} (tokens could differ): build it again"
            )
        cached = _LOADED.get(directory)
        if cached is not None and cached.fingerprint() == meta["fingerprint"]:
            return cached
        items = _Items.from_json((directory / ITEMS_FILE).read_bytes())
        # A plain ndarray view of the map: np.memmap's subclass hooks cost on every lookup.
        grams = np.load(directory / GRAMS_FILE, mmap_mode="r").view(np.ndarray)
        gram_items = np.load(directory / GRAM_ITEMS_FILE, mmap_mode="r").view(np.ndarray)
        gram_filter = np.load(directory / FILTER_FILE, mmap_mode="r").view(np.ndarray)
        index = cls(grams, gram_items, gram_filter, items, meta, directory)
        _LOADED[directory] = index
        return index

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Dask and Prefect ship the step to workers: a saved index travels as its folder.
        if self._directory is not None:
            return _unpickle_saved, (str(self._directory), self.fingerprint())
        return super().__reduce_ex__(protocol)

    def matches(self, text: str) -> list[Contamination]:
        """Every benchmark span in `text`, ordered by position: overlapping or adjacent grams of
        one item are one span. Empty for a clean text (the common case, and the cheap one)."""
        tokens = tokenize(text)
        if not self._lengths or len(tokens) < self._lengths[0]:
            return []
        runs = TokenRuns(tokens.hashes)
        hashes = runs.all_runs(self._lengths)
        slots = hashes >> self._filter_shift
        bytes_ = self._filter[slots >> np.uint64(3)]
        candidates = np.flatnonzero((bytes_ >> (slots & np.uint64(7)).astype(np.uint8)) & 1)
        if not len(candidates):
            return []
        where = np.searchsorted(self._grams, hashes[candidates])
        where[where == len(self._grams)] = 0
        hit = self._grams[where] == hashes[candidates]
        if not hit.any():
            return []
        starts, lengths = runs.locate(self._lengths, candidates[hit])
        return self._contaminations(tokens, starts, starts + lengths, self._gram_items[where[hit]])

    def first_match(self, text: str) -> Contamination | None:
        """The first benchmark span of `text` (by position), or None when it is clean."""
        found = self.matches(text)
        return found[0] if found else None

    def cut(self, text: str, matches: Iterable[Contamination]) -> str:
        """`text` without the spans of `matches`: overlapping spans are merged, punctuation
        attached to a span goes with it, and whitespace where text was removed collapses to one
        space (or the line or paragraph break that was there)."""
        spans = sorted(_widened(text, m.start, m.end) for m in matches)
        if not spans:
            return text
        kept, position = [], 0
        for start, end in spans:
            if start > position:
                kept.append(text[position:start])
            position = max(position, end)
        kept.append(text[position:])
        result = kept[0]
        for piece in kept[1:]:
            left, right = result.rstrip(), piece.lstrip()
            gap = result[len(left) :] + piece[: len(piece) - len(right)]
            separator = "\n\n" if gap.count("\n") >= 2 else "\n" if "\n" in gap else " "
            result = left + separator + right if left and right else left + right
        return result

    def fingerprint(self) -> str:
        """sha256 of the index's content (settings, grams, item names): a cache key."""
        return self._meta["fingerprint"]

    def stats(self) -> dict[str, Any]:
        """Settings and totals, and per benchmark: `items`, `texts`, `skipped_short` (texts with
        fewer than min_item_tokens tokens, not indexed) and `grams` (unique grams it owns)."""
        return {
            "n": self.n,
            "min_item_tokens": self.min_item_tokens,
            "gram_lengths": list(self._lengths),
            **self._totals(),
            "benchmarks": self._meta["benchmarks"],
        }

    def _totals(self) -> dict[str, int]:
        per_benchmark = self._meta["benchmarks"].values()
        return {
            key: sum(counts[key] for counts in per_benchmark)
            for key in ("items", "texts", "skipped_short", "grams")
        }

    def _contaminations(
        self, tokens: Tokens, starts: np.ndarray, ends: np.ndarray, items: np.ndarray
    ) -> list[Contamination]:
        """Matched runs (token ranges, their items) as character spans, one per item and
        stretch of overlapping or adjacent runs."""
        names = self._items
        found = []
        run: list[int] | None = None  # [item, first token, end token] being merged
        for position in np.lexsort((starts, items)):
            item, start, end = int(items[position]), int(starts[position]), int(ends[position])
            if run is not None and run[0] == item and start <= run[2]:
                run[2] = max(run[2], end)
                continue
            if run is not None:
                found.append(run)
            run = [item, start, end]
        found.append(run)
        contaminations = [
            Contamination(
                names.benchmarks[names.benchmark_of[item]],
                names.ids[item],
                int(tokens.starts[first]),
                int(tokens.ends[end - 1]),
            )
            for item, first, end in found
        ]
        return sorted(contaminations, key=lambda c: (c.start, c.end, c.benchmark, c.item))


_META_KEYS = (
    "index_format", "unicode_version", "n", "min_item_tokens", "lengths", "benchmarks",
    "fingerprint",
)  # fmt: skip


def _unpickle_saved(directory: str, fingerprint: str) -> NgramIndex:
    index = NgramIndex.load(directory)
    if index.fingerprint() != fingerprint:
        raise DecontaminationError(
            f"the decontamination index at {directory} changed after this run started: run it "
            "again"
        )
    return index


def _fingerprint(
    meta: dict[str, Any], grams: np.ndarray, gram_items: np.ndarray, items: bytes
) -> str:
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for part in (grams.tobytes(), gram_items.tobytes(), items):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _membership_filter(grams: np.ndarray) -> np.ndarray:
    """A bit per value of the grams' top bits (FILTER_BITS_PER_GRAM bits per gram, at least
    2**16), packed into bytes: a run whose bit is clear is surely not a gram."""
    bits = max(16, (len(grams) * FILTER_BITS_PER_GRAM - 1).bit_length())
    gram_filter = np.zeros(1 << (bits - 3), np.uint8)
    if not len(grams):
        return gram_filter
    slots = np.unique(grams >> np.uint64(64 - bits))
    where = slots >> np.uint64(3)
    values = np.left_shift(1, slots & np.uint64(7)).astype(np.uint8)
    firsts = np.flatnonzero(np.concatenate(([True], where[1:] != where[:-1])))
    gram_filter[where[firsts]] = np.bitwise_or.reduceat(values, firsts)
    return gram_filter


def _chunks(sizes: list[int], limit: int) -> Iterable[tuple[int, int]]:
    """(first, last) ranges of consecutive entries whose sizes add up to about `limit`."""
    first, total = 0, 0
    for index, size in enumerate(sizes):
        if total and total + size > limit:
            yield first, index
            first, total = index, 0
        total += size + 1
    yield first, len(sizes)


def _text_grams(
    texts: list[str], n: int, min_item_tokens: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gram hashes, gram lengths, text of each gram, tokens per text) of `texts`, tokenized
    together: joined by newlines, which no token spans."""
    offsets = np.cumsum([0] + [len(text) + 1 for text in texts[:-1]])
    tokens = tokenize("\n".join(texts))
    text_of_token = np.searchsorted(offsets, tokens.starts, side="right") - 1
    counts = np.bincount(text_of_token, minlength=len(texts))
    first_token = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # Every run of n tokens inside a text that has n or more...
    place = np.arange(len(tokens)) - first_token[text_of_token]
    long_starts = np.flatnonzero(place <= counts[text_of_token] - n)
    # ...and the whole of each shorter text that is long enough.
    short_texts = np.flatnonzero((counts >= min_item_tokens) & (counts < n))
    starts = np.concatenate((long_starts, first_token[short_texts]))
    lengths = np.concatenate((np.full(len(long_starts), n), counts[short_texts]))
    text_of_gram = np.concatenate((text_of_token[long_starts], short_texts))
    hashes = TokenRuns(tokens.hashes).hashes(starts, lengths)
    return hashes, lengths, text_of_gram, counts


def _widened(text: str, start: int, end: int) -> tuple[int, int]:
    """The span with the punctuation attached to it (up to whitespace or the text's edge)."""
    before = start
    while before > 0 and not text[before - 1].isspace() and not text[before - 1].isalnum():
        before -= 1
    if before > 0 and not text[before - 1].isspace():
        before = start  # the punctuation belongs to a word before the span
    after = end
    while after < len(text) and not text[after].isspace() and not text[after].isalnum():
        after += 1
    if after < len(text) and not text[after].isspace():
        after = end
    return before, after
