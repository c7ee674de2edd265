"""Benchmark near-duplicate removal on the labelled webdocs corpus: quality and speed, lmforge
against datatrove's MinHash pipeline measured in the same run.

    python bench/dedup.py --staging /tmp/$USER-dedup-staging \
        --datatrove-python /tmp/dtvenv/bin/python

Input: the documents that reach dedup in the data stage. Every WARC file is run through
`process_warc_file` (default `DataConfig`) once; `--staging DIR` keeps those candidates parquet
files so that later runs skip extraction.

Quality, table 1:
- Against `labels.tsv` (documents sharing a `dup_group` are copies). A *removal* is correct when
  the survivor it was removed in favour of (the kept member of its cluster) is in its
  `dup_group`. Removal precision = correct removals / removals; removal recall = correct
  removals / expected removals, where a group of n documents that reached dedup expects n - 1.
  Pair precision/recall compare the pairs inside predicted clusters with the pairs inside
  labelled groups (`bench/data_quality.py`'s `dedup_scores`, so both benchmarks agree).
- Against exact Jaccard similarity over `lmforge.tasks.dedup.shingles` (word 5-grams, character
  5-grams for zh/ja/ko/th), computed by brute force for *every* pair of documents (a sparse
  document x shingle matrix times its transpose: exact, not sampled). Missed = pairs at >= 0.8
  that do not end up in one cluster; removed pairs below 0.8 = (removed, survivor) pairs whose
  Jaccard is below 0.8 (a cluster joined transitively, A~B~C, can legitimately hold one).

Speed, table 2: documents/second for signatures + candidate pairs + clusters (lmforge:
`find_duplicates`, which also verifies candidates; datatrove: MinhashDedupSignature ->
MinhashDedupBuckets -> MinhashDedupCluster on one local task, the same documents as JSONL,
5-grams, 14 bands x 8 hashes). Each side runs in its own subprocess; its peak RSS comes from
`os.wait4`. Imports and interpreter start-up are not timed for either side. datatrove lives in
its own venv (`--datatrove-python`); without it only lmforge is measured. Set it up with:

    python3 -m venv /tmp/dtvenv
    /tmp/dtvenv/bin/pip install "datatrove[processing]==0.10.*" orjson "spacy>=3.7,<4"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from data_quality import dedup_scores, read_labels
from lmforge.tasks.data_config import DataConfig
from lmforge.tasks.warc_processing import process_warc_file
from lmforge.tasks.dedup import DedupDocument, MinHashConfig, find_duplicates, shingles
from scipy import sparse

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "webdocs"
SPEED_TARGET = 2.0
THRESHOLD = MinHashConfig().threshold


# ---------------------------------------------------------------- input documents


def stage_candidates(corpus: Path, staging: Path) -> Path:
    """All candidates (id, url, text, lang) in one parquet file, extracting the WARCs once."""
    merged = staging / "all.candidates.parquet"
    if merged.exists():
        return merged
    staging.mkdir(parents=True, exist_ok=True)
    warcs = sorted(corpus.glob("*.warc.gz"))
    if not warcs:
        sys.exit(f"no *.warc.gz in {corpus}: pass --corpus")
    config = DataConfig()
    tables = []
    for warc in warcs:
        started = time.perf_counter()
        result = process_warc_file(warc, config, staging)
        print(f"  staged {warc.name}: {result.stats['candidates']} candidates "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)  # fmt: skip
        tables.append(pq.read_table(result.candidates_path, columns=["id", "url", "text", "lang"]))
    partial = merged.with_suffix(".tmp")
    pq.write_table(pa.concat_tables(tables), partial)
    partial.rename(merged)  # a crash never leaves a merged file that looks whole
    return merged


class ParquetDocuments:
    """The candidates as DedupDocuments, re-readable (find_duplicates iterates twice)."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self) -> Iterator[DedupDocument]:
        for batch in pq.ParquetFile(self.path).iter_batches(columns=["id", "text", "lang"]):
            for row in batch.to_pylist():
                yield DedupDocument(row["id"], row["text"], row["lang"])


# ---------------------------------------------------------------- the two peers, in subprocesses


def memory_kib(field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak) of this process from /proc, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def lmforge_worker(candidates: Path, out: Path) -> None:
    """Runs in the child: find_duplicates over the candidates, results and timings to `out`.

    The per-process code point tables are built first (a fixed ~0.3 s, ~100 MiB cost, charged
    to the timed run's peak RSS anyway) and the peak is then reset, so the growth reported per
    document is what dedup itself holds."""
    shingles("warm up the code point tables", None, MinHashConfig())
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    baseline_kib = memory_kib("VmRSS")
    started = time.perf_counter()
    report = find_duplicates(ParquetDocuments(candidates), MinHashConfig())
    seconds = time.perf_counter() - started
    peak_kib = memory_kib("VmHWM")
    removed = [{"id": d.id, "duplicate_of": d.duplicate_of} for d in report.duplicates]
    out.write_text(json.dumps({"seconds": seconds, "baseline_rss_kib": baseline_kib,
                               "dedup_peak_rss_kib": peak_kib,
                               "stats": report.stats, "removed": removed}))  # fmt: skip


# datatrove's side, run by the datatrove interpreter: argv = input folder, work folder, out json.
DATATROVE_SCRIPT = textwrap.dedent(
    """
    import json, struct, sys, time
    from pathlib import Path
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import SpaCyTokenizer

    source, work, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8,
                           hash_config=HashConfig(precision=64))
    # spaCy's blank English model needs no download (NLTK's punkt would).
    tokenizer = SpaCyTokenizer("en")
    stages = [
        [JsonlReader(source, id_key="id", text_key="text"),
         MinhashDedupSignature(output_folder=str(work / "sigs"), config=config,
                               language=tokenizer)],
        [MinhashDedupBuckets(input_folder=str(work / "sigs"),
                             output_folder=str(work / "buckets"), config=config)],
        [MinhashDedupCluster(input_folder=str(work / "buckets"),
                             output_folder=str(work / "remove"), config=config,
                             save_cluster_id=True)],
    ]
    started = time.perf_counter()
    for index, pipeline in enumerate(stages):
        tasks = config.num_buckets if index == 1 else 1
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1,
                              logging_dir=str(work / f"logs{index}")).run()
    seconds = time.perf_counter() - started
    def pairs(path):
        data = path.read_bytes() if path.exists() else b""
        return [struct.unpack_from("<II", data, i) for i in range(0, len(data), 8)]
    removed_path = work / "remove" / "000000.remove"
    data = removed_path.read_bytes() if removed_path.exists() else b""
    removed = [struct.unpack_from("<I", data, i)[0] for i in range(0, len(data), 4)]
    clusters = pairs(work / "remove" / "000000.clusters")
    out.write_text(json.dumps({"seconds": seconds, "removed": removed, "clusters": clusters}))
    """
)


def run_measured(command: list[str], out: Path) -> tuple[dict, float, int]:
    """Run `command` (which writes JSON to `out`); its result, wall seconds and peak RSS KiB."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{command[0]} failed (exit {child.returncode}):\n{stderr[-3000:]}")
    return json.loads(out.read_text()), wall, usage.ru_maxrss  # Linux reports KiB


def run_datatrove(python: str, candidates: Path, work: Path) -> tuple[dict, float, int]:
    source = work / "input"
    source.mkdir()
    with open(source / "docs.jsonl", "w", encoding="utf-8") as handle:
        for document in ParquetDocuments(candidates):
            handle.write(json.dumps({"id": document.id, "text": document.text}) + "\n")
    script = work / "datatrove_minhash.py"
    script.write_text(DATATROVE_SCRIPT)
    out = work / "datatrove.json"
    return run_measured([python, str(script), str(source), str(work / "dt"), str(out)], out)


def datatrove_removals(result: dict, ids: list[str]) -> list[dict]:
    """datatrove's removals as {id, duplicate_of}: the survivor is the cluster's kept member."""
    removed = set(result["removed"])
    survivor_of_cluster = {cluster: doc for doc, cluster in result["clusters"]
                           if doc not in removed}  # fmt: skip
    cluster_of = {doc: cluster for doc, cluster in result["clusters"]}
    return [{"id": ids[doc], "duplicate_of": ids[survivor_of_cluster[cluster_of[doc]]]}
            for doc in sorted(removed)]  # fmt: skip


# ---------------------------------------------------------------- exact Jaccard, every pair


def similar_pairs(candidates: Path, ids: list[str], floor: float = 0.5) -> dict[tuple[int, int], float]:
    """Exact Jaccard of every document pair at or above `floor`, by brute force: the binary
    document x shingle matrix times its transpose counts each pair's shared shingles."""
    config = MinHashConfig()
    sets = [shingles(d.text, d.lang, config) for d in ParquetDocuments(candidates)]
    sizes = np.array([len(s) for s in sets], dtype=np.int64)
    columns = np.concatenate(sets) if sets else np.zeros(0, np.uint64)
    _, column_index = np.unique(columns, return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), sizes)
    matrix = sparse.csr_matrix(
        (np.ones(len(rows), np.int32), (rows, column_index)), shape=(len(sets), column_index.max() + 1)
    )
    transposed = matrix.T.tocsc()
    found: dict[tuple[int, int], float] = {}
    for start in range(0, len(sets), 256):  # row blocks keep the product's memory small
        block = (matrix[start : start + 256] @ transposed).tocoo()
        a, b, common = block.row + start, block.col, block.data
        keep = a < b
        a, b, common = a[keep], b[keep], common[keep]
        similarity = common / (sizes[a] + sizes[b] - common)
        for i, j, s in zip(a[similarity >= floor], b[similarity >= floor], similarity[similarity >= floor]):
            found[(int(i), int(j))] = float(s)
    return found


def jaccard_scores(removals: list[dict], similar: dict[tuple[int, int], float],
                   position: dict[str, int]) -> dict[str, int]:  # fmt: skip
    """True >= 0.8 pairs left in different clusters, and (removed, survivor) pairs below 0.8."""
    cluster = {position[r["id"]]: position[r["duplicate_of"]] for r in removals}
    true_pairs = [pair for pair, s in similar.items() if s >= THRESHOLD]
    missed = sum(cluster.get(a, a) != cluster.get(b, b) for a, b in true_pairs)
    below = [similar.get(tuple(sorted((p, s))), 0.0) for p, s in cluster.items()]
    return {
        "true_pairs": len(true_pairs),
        "missed_true_pairs": missed,
        "removed_pairs": len(below),
        "removed_below_threshold": sum(s < THRESHOLD for s in below),
        "removed_below_0.6": sum(s < 0.6 for s in below),
    }


# ---------------------------------------------------------------- tables


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--staging", type=Path, help="keep staged candidates here between runs")
    parser.add_argument("--datatrove-python", default="/tmp/dtvenv/bin/python")
    parser.add_argument("--lmforge-worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lmforge_worker:
        lmforge_worker(*args.lmforge_worker)
        return

    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as scratch_name:
        scratch = Path(scratch_name)
        candidates = stage_candidates(args.corpus, args.staging or scratch / "staging")
        table = pq.read_table(candidates, columns=["id", "url"]).to_pylist()
        ids = [row["id"] for row in table]
        url_of = {row["id"]: row["url"] for row in table}
        position = {doc_id: i for i, doc_id in enumerate(ids)}
        print(f"{len(ids)} candidate documents from {args.corpus}", file=sys.stderr)

        out = scratch / "lmforge.json"
        command = [sys.executable, __file__, "--lmforge-worker", str(candidates), str(out)]
        lm, lm_wall, lm_rss = run_measured(command, out)
        results = {"lmforge": (lm["removed"], lm["seconds"], lm_wall, lm_rss)}

        why_not = None
        if not Path(args.datatrove_python).exists():
            why_not = f"{args.datatrove_python} not found (see the docstring to set it up)"
        else:
            dt, dt_wall, dt_rss = run_datatrove(args.datatrove_python, candidates, scratch)
            results["datatrove"] = (datatrove_removals(dt, ids), dt["seconds"], dt_wall, dt_rss)

        labels, _ = read_labels(args.corpus)
        group_of = {url_of[i]: labels[url_of[i]]["dup_group"] for i in ids if url_of[i] in labels}
        started = time.perf_counter()
        similar = similar_pairs(candidates, ids)
        print(f"exact all-pairs Jaccard: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    rows = []
    for name, (removals, *_rest) in results.items():
        labelled = [{"url": url_of[r["id"]], "duplicate_of": r["duplicate_of"]} for r in removals
                    if url_of[r["id"]] in group_of and url_of[r["duplicate_of"]] in group_of]  # fmt: skip
        rows.append((name, len(removals), dedup_scores(group_of, labelled, url_of),
                     jaccard_scores(removals, similar, position)))  # fmt: skip

    expected = rows[0][2]["dedup_expected_removals"]
    print(f"\n1. Quality on {len(ids)} documents ({expected} expected removals from labels.tsv; "
          f"{rows[0][3]['true_pairs']} pairs with exact Jaccard >= {THRESHOLD})")  # fmt: skip
    header = ("peer", "removed", "removal P", "removal R", "pair P", "pair R",
              "missed >=0.8 pairs", "removed pairs <0.8", "<0.6")  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, removed, labels_score, exact in rows:
        print(f"| {name} | {removed} | {percent(labels_score['dedup_removal_precision'])} | "
              f"{percent(labels_score['dedup_removal_recall'])} | "
              f"{percent(labels_score['dedup_pair_precision'])} | "
              f"{percent(labels_score['dedup_pair_recall'])} | "
              f"{exact['missed_true_pairs']} of {exact['true_pairs']} | "
              f"{exact['removed_below_threshold']} of {exact['removed_pairs']} | "
              f"{exact['removed_below_0.6']} |")  # fmt: skip

    print("\n2. Speed: signatures + candidate pairs + clusters, one process each")
    print("| peer | work s | docs/s | wall s (with start-up) | peak RSS MiB |\n|---|---|---|---|---|")
    for name, (_, seconds, wall, rss) in results.items():
        print(f"| {name} | {seconds:.2f} | {len(ids) / seconds:,.0f} | {wall:.2f} | {rss / 1024:.0f} |")
    if "datatrove" in results:
        ratio = results["datatrove"][1] / results["lmforge"][1]
        verdict = "meets" if ratio >= SPEED_TARGET else "MISSES"
        print(f"\nlmforge / datatrove speed: {ratio:.1f}x ({verdict} the {SPEED_TARGET:.0f}x target); "
              f"peak RSS ratio datatrove / lmforge: {results['datatrove'][3] / lm_rss:.2f}")  # fmt: skip
    else:
        print(f"\ndatatrove not measured: {why_not}")
    growth_kib = max(lm["dedup_peak_rss_kib"] - lm["baseline_rss_kib"], 0)
    per_100k = growth_kib / len(ids) * 100_000 / 1024
    print(f"lmforge memory growth during dedup: {growth_kib / 1024:.0f} MiB for {len(ids)} docs; "
          f"EXTRAPOLATED linearly to 100k docs: ~{per_100k:,.0f} MiB (signatures, LSH bands, the "
          f"candidates' shingle sets, ids; excludes the fixed ~{lm['baseline_rss_kib'] / 1024:.0f} MiB "
          f"of interpreter and tables); the raw signatures alone are "
          f"{MinHashConfig().num_perm * 8 * 100_000 / 2**20:.0f} MiB per 100k docs")  # fmt: skip
    print(f"lmforge stats: {lm['stats']}")


if __name__ == "__main__":
    main()
