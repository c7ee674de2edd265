"""Bytes per token of the trained tokenizer, per language, on the webdocs corpus.

    python bench/tokenizer_languages.py                   # data stage on ../shared/corpus/webdocs
    python bench/tokenizer_languages.py --data DATA       # reuse a data_refresh output

Builds shards once per language temperature (1 = the data's mix, larger = flatter) and prints,
per language, the share of the tokenizer's training sample and the UTF-8 bytes per token on the
validation split, which the tokenizer never saw. `<|endoftext|>` is not counted as a token.
Higher bytes per token is better compression: more text per model step.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.refresh import refresh_dataset
from lmforge.tasks.tokens.shards import ShardConfig, build_shards

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "webdocs"


def bytes_per_token(split: dict[str, Any], lang: str | None = None) -> float:
    """UTF-8 bytes per token of a manifest split (one language, or all), without the EOTs."""
    if lang is None:
        text_bytes, tokens, documents = split["bytes"], split["tokens"], split["documents"]
    else:
        text_bytes = split["bytes_by_language"].get(lang, 0)
        tokens = split["tokens_by_language"].get(lang, 0)
        documents = split["documents_by_language"].get(lang, 0)
    content_tokens = tokens - documents
    return text_bytes / content_tokens if content_tokens else float("nan")


def print_table(manifests: dict[float, dict[str, Any]], min_val_kb: float) -> None:
    temperatures = sorted(manifests)
    first = manifests[temperatures[0]]
    train, val = first["splits"]["train"], first["splits"]["val"]
    langs = set(train["documents_by_language"]) | set(val["documents_by_language"])

    def total(key: str, lang: str) -> int:
        return train[key].get(lang, 0) + val[key].get(lang, 0)

    documents = {lang: total("documents_by_language", lang) for lang in langs}
    text_mb = {lang: total("bytes_by_language", lang) / 1e6 for lang in langs}
    header = "| lang | docs | text MB | val KB |"
    header += "".join(f" sample share T={t:g} |" for t in temperatures)
    header += "".join(f" bytes/token T={t:g} |" for t in temperatures)
    print(header)
    print("|" + "---|" * (4 + 2 * len(temperatures)))
    for lang in sorted(documents, key=lambda lang: -text_mb[lang]):
        val_kb = val["bytes_by_language"].get(lang, 0) / 1e3
        if val_kb < min_val_kb:
            continue
        row = f"| {lang} | {documents[lang]} | {text_mb[lang]:.2f} | {val_kb:.0f} |"
        for t in temperatures:
            sample = manifests[t]["tokenizer_sample"]
            row += f" {sample['bytes_by_language'].get(lang, 0) / sample['bytes']:.1%} |"
        for t in temperatures:
            row += f" {bytes_per_token(manifests[t]['splits']['val'], lang):.2f} |"
        print(row)
    row = f"| all | {sum(documents.values())} | {sum(text_mb.values()):.2f} |"
    row += f" {val['bytes'] / 1e3:.0f} |" + " 100% |" * len(temperatures)
    row += "".join(f" {bytes_per_token(manifests[t]['splits']['val']):.2f} |" for t in temperatures)
    print(row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--data", type=Path, help="reuse this data_refresh output")
    parser.add_argument("--out", type=Path, help="keep the shards here (default: temporary)")
    parser.add_argument("--vocab-size", type=int, default=ShardConfig().vocab_size)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="held-out share, larger than the "
        "default 0.05 so that small languages have validation text"
    )
    parser.add_argument("--min-val-kb", type=float, default=20.0, help="hide smaller languages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as scratch:
        work = args.out or Path(scratch)
        data = args.data
        if data is None:
            if not any(args.corpus.glob("*.warc.gz")):
                parser.error(f"{args.corpus} has no *.warc.gz files (pass --corpus or --data)")
            data = work / "data"
            started = time.perf_counter()
            refresh_dataset([str(args.corpus / "*.warc.gz")], data, DataConfig())
            print(f"data stage: {time.perf_counter() - started:.0f} s -> {data}")
        manifests = {}
        for temperature in args.temperatures:
            started = time.perf_counter()
            manifests[temperature] = build_shards(
                data,
                work / f"shards-T{temperature:g}",
                ShardConfig(
                    vocab_size=args.vocab_size,
                    val_fraction=args.val_fraction,
                    language_temperature=temperature,
                ),
            )
            vocab = manifests[temperature]["tokenizer"]["vocab_size"]
            print(f"T={temperature:g}: {vocab} tokens, {time.perf_counter() - started:.0f} s")
        print_table(manifests, args.min_val_kb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
