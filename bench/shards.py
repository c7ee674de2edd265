"""Shard building throughput against `tokenizers`' own batch encoding of the same texts.

    python bench/shards.py                    # the Python documentation pages (offline sample)
    python bench/shards.py --data DATA        # the documents of a data_refresh output
    python bench/shards.py --repeat 3         # more rounds (the best of each contender counts)

Contenders, timed in interleaved rounds in this process on the same texts, with the same
tokenizer, batch size and threads:
  - `encode_batch` / `encode_batch_fast`: the texts already in memory as a Python list, encoded
    in batches; nothing is kept or written (the floor no pipeline can beat);
  - `build_shards`: reading the Parquet documents, the train/val split, encoding, the shuffle,
    Arrow shards, digests and the manifest, with the tokenizer given (its training is timed
    separately, once).
Target: build_shards MB/s >= 0.85 x encode_batch MB/s (sharding costs under 15%).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.manifest import stage_output
from lmforge.tasks.data.sample.corpus import collect_doc_pages, page_text
from lmforge.tasks.tokens.shards import ShardConfig, build_shards, document_files
from lmforge.tasks.tokens.tokenizer import load_tokenizer

TARGET = 0.85


def documentation_dataset(out: Path) -> Path:
    """A data-stage-shaped directory holding every Python documentation page as a document."""
    pages = collect_doc_pages(None, random.Random(0))
    with stage_output(out, "data_refresh", params={"source": "python docs"}) as stage:
        (stage.path / "docs").mkdir()
        table = pa.table({
            "id": [page.path for page in pages],
            "url": [page.path for page in pages],
            "text": [page_text(page) for page in pages],
            "lang": ["en"] * len(pages),
        })  # fmt: skip
        pq.write_table(table, stage.path / "docs" / "part-00000.parquet")
    return out


def read_texts(data: Path) -> list[str]:
    files = document_files(data)
    texts = [t for path in files for t in pq.read_table(path, columns=["text"])["text"].to_pylist()]
    return [text for text in texts if text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a data_refresh output (default: Python docs)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--vocab-size", type=int, default=ShardConfig().vocab_size)
    parser.add_argument("--batch-size", type=int, default=ShardConfig().batch_size)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as scratch:
        work = Path(scratch)
        data = args.data or documentation_dataset(work / "data")
        texts = read_texts(data)
        megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
        print(f"{len(texts)} documents, {megabytes:.1f} MB of text from {data}")

        started = time.perf_counter()
        trained = build_shards(data, work / "trained", ShardConfig(vocab_size=args.vocab_size))
        with_training = time.perf_counter() - started
        tokenizer_path = work / "trained" / "tokenizer.json"
        tokenizer = load_tokenizer(tokenizer_path)
        tokens = sum(trained["splits"][split]["tokens"] for split in ("train", "val"))

        def plain(method: str) -> None:
            encode = getattr(tokenizer, method)
            for start in range(0, len(texts), args.batch_size):
                encode(texts[start : start + args.batch_size])

        def shards() -> None:
            out = work / "shards"
            shutil.rmtree(out, ignore_errors=True)
            build_shards(
                data, out,
                ShardConfig(tokenizer_path=str(tokenizer_path), batch_size=args.batch_size),
            )  # fmt: skip

        contenders = {
            "encode_batch": lambda: plain("encode_batch"),
            "encode_batch_fast": lambda: plain("encode_batch_fast"),
            "build_shards": shards,
        }
        best = {name: float("inf") for name in contenders}
        cpu = {name: float("inf") for name in contenders}
        for _ in range(args.repeat):
            for name, run in contenders.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                run()
                best[name] = min(best[name], time.perf_counter() - started)
                cpu[name] = min(cpu[name], time.process_time() - cpu_started)

    # CPU seconds (all threads) are reported too: on a shared machine they move less than wall
    # time when other processes take the cores.
    rate = {name: megabytes / seconds for name, seconds in best.items()}
    print(
        f"\n| contender | best of {args.repeat} (s) | MB/s | M tokens/s | build_shards ÷ it "
        "| CPU s | build_shards ÷ it, CPU time |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, seconds in best.items():
        print(
            f"| {name} | {seconds:.2f} | {rate[name]:.2f} | {tokens / seconds / 1e6:.2f} | "
            f"{rate['build_shards'] / rate[name]:.2f} | {cpu[name]:.2f} | "
            f"{cpu[name] / cpu['build_shards']:.2f} |"
        )
    print(
        f"| build_shards + BPE training (once) | {with_training:.2f} | "
        f"{megabytes / with_training:.2f} | | | | |"
    )
    ratio = rate["build_shards"] / rate["encode_batch"]
    verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
    print(f"\nbuild_shards / encode_batch = {ratio:.2f} (target >= {TARGET}) {verdict}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
