"""Benchmark dedup on Dask against the single process (issue #18): wall time and peak memory
per worker on a synthetic crawl built from webdocs, and the per-worker memory as it doubles.

    python bench/dedup_distributed.py --staging /tmp/$USER-dedup-staging \
        --work /tmp/$USER-dedup-crawl [--docs 2000000] [--workers 1,2] [--worker-memory-mib 64] \
        [--chunk-documents 50000] [--doublings 2 | --sizes 100000,400000] [--results DIR]
    python bench/dedup_distributed.py --small ...   # 20,000 documents: a quick check

A run at 2 M documents takes hours on 2 cores: `--results DIR` keeps each measurement as it
finishes and reuses the ones made with the same settings, input files and dedup code
(comments and docstrings aside), so a run stopped halfway, or one that adds a worker count
later, measures only what is missing. `--doublings 0` measures `--docs` alone (table 2 then has
one row); `--sizes` names table 2's smaller sizes instead of halving.

Input: webdocs' candidates (`bench/dedup.py`'s `stage_candidates`: every WARC file through
the data stage once, kept in `--staging`), repeated as distinct replicas until `--docs`
documents (`mark_words`: ids suffixed, every word marked per replica, so the duplicate
structure repeats and nothing is shared across replicas), one candidates file per replica and
WARC file, kept in `--work` for later runs.

Each measurement runs in its own process: `find_duplicates` in one process, or
`find_duplicates_distributed` on a LocalCluster of n single-threaded worker processes with
`--worker-memory-mib` as the partition budget and chunks of at most `--chunk-documents`
(a fixed chunk keeps the memory per worker comparable across sizes). Peak RSS: the process's (or each worker's)
VmHWM, reset after imports and code point tables; "growth" subtracts that baseline. The
driver's peak includes reading the report back (`dedup_dask.report`), which grows with the run
as the single process's does. Every Dask run is checked to remove exactly what the single
process removes at that size.

Table 1: both paths at `--docs`. Table 2: per-worker peak as the corpus grows (Dask with the
most workers) beside the single process's. Table 3: a Common Crawl snapshot on N machines,
extrapolated from the measured worker-seconds per document (assumes the stages keep scaling as
measured; the cluster's start-up and the report read-back are not in it). Table 4: the largest
Dask run stage by stage (wall time, the largest worker's peak RSS growth; `StageWatch`).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from dedup import DEFAULT_CORPUS, mark_words, memory_kib, stage_candidates
from lmforge.tasks.data.dataset_writer import CandidateDocuments
from lmforge.tasks.data.dedup import MinHashConfig, find_duplicates, shingles
from lmforge.tasks.data.dedup_dask import (
    DistributedDedupSettings,
    DocumentFile,
    find_duplicates_distributed,
)
from lmforge.tasks.data.dedup_dask.run import Stages

CANDIDATE_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("lang", pa.string()),
                              ("declared_lang", pa.string())])  # fmt: skip
# Documents in a Common Crawl snapshot reaching dedup, for the extrapolation (the issue's
# refresh of 300 M pages; a whole monthly crawl is ~3 B).
SNAPSHOTS = (300_000_000, 3_000_000_000)
MACHINES = (1, 8, 64)
WORKERS_PER_MACHINE = 16
# What can open with a docstring, which the code digest leaves out.
DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


# ---------------------------------------------------------------- the synthetic crawl


def build_crawl(candidates: Path, documents: int, work: Path) -> list[DocumentFile]:
    """Replicas of the candidates, one file per replica and WARC file, until `documents`
    (whole files; the last replica may be cut short). Reuses the files of an earlier run."""
    listing = work / f"crawl-{documents}.json"
    if listing.exists():
        return [DocumentFile(**item) for item in json.loads(listing.read_text())]
    table = pq.read_table(candidates, columns=["id", "text", "lang", "declared_lang", "warc_file"])
    by_file = {}
    for row in table.to_pylist():
        by_file.setdefault(row["warc_file"], []).append(row)
    files, total, replica = [], 0, 0
    work.mkdir(parents=True, exist_ok=True)
    while total < documents:
        for warc_file, rows in sorted(by_file.items()):
            if total >= documents:
                break
            rows = rows[: documents - total]
            # The count in the name: a file cut short for one size is not reused whole.
            path = work / f"r{replica:05d}-{warc_file}-{len(rows)}.parquet"
            if not path.exists():
                columns = {name: [] for name in CANDIDATE_SCHEMA.names}
                for row in rows:
                    lang = row["lang"]  # shingled by the detected language (the default)
                    marked = replica > 0
                    columns["id"].append(f"{row['id']}#{replica}" if marked else row["id"])
                    columns["text"].append(mark_words(row["text"], replica, lang) if marked
                                           else row["text"])  # fmt: skip
                    columns["lang"].append(lang)
                    columns["declared_lang"].append(row["declared_lang"])
                pq.write_table(pa.table(columns, schema=CANDIDATE_SCHEMA), path)
            files.append(DocumentFile(str(path), f"{replica}/{warc_file}", len(rows)))
            total += len(rows)
        replica += 1
    listing.write_text(json.dumps([vars(f) for f in files]))
    return files


def first_documents(files: list[DocumentFile], documents: int) -> list[DocumentFile]:
    """The leading files holding `documents` (whole files)."""
    chosen, total = [], 0
    for item in files:
        if total >= documents:
            break
        chosen.append(item)
        total += item.documents
    return chosen


# ---------------------------------------------------------------- measurements, in children


def clear_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def reset_peak() -> int:
    """Code point tables built, VmHWM reset to the current RSS; returns that baseline (KiB)."""
    shingles("warm up the code point tables", None, MinHashConfig())
    clear_peak()
    return memory_kib("VmRSS")


class StageWatch:
    """Each stage's wall time and each worker's peak RSS during it (VmHWM cleared as the stage
    starts): where a Dask run's time and memory go. Wraps `Stages.__call__` for the run, so the
    measured code is the library's, unchanged."""

    def __init__(self, client) -> None:
        self.client = client
        self.stages: list[dict] = []

    def __enter__(self) -> StageWatch:
        self.call = call = Stages.__call__

        def watched(stages, stage, function, items, **kwargs):
            items = list(items)
            if not items:  # no tasks (sign-prior without a prior index)
                return call(stages, stage, function, items, **kwargs)
            self.client.run(clear_peak)
            started = time.perf_counter()
            result = call(stages, stage, function, items, **kwargs)
            seconds = time.perf_counter() - started
            peaks = self.client.run(memory_kib, "VmHWM")
            self.stages.append({"stage": stage, "seconds": seconds, "peak_kib": peaks})
            return result

        Stages.__call__ = watched
        return self

    def __exit__(self, *exc) -> None:
        Stages.__call__ = self.call

    def worker_peaks(self, workers: list[str]) -> list[int]:
        """Each worker's peak RSS over the whole run (KiB)."""
        return [max(s["peak_kib"].get(w, 0) for s in self.stages) for w in workers]


def outcome_digest(report) -> str:
    """What must be identical across paths: removals, survivors, reasons, kept ids."""
    digest = hashlib.sha256()
    for d in report.duplicates:
        digest.update(f"{d.id}\t{d.duplicate_of}\t{d.reason}\n".encode())
    digest.update("\n".join(report.kept.ids).encode())
    return digest.hexdigest()


def child(mode: str, files_json: Path, workers: int, memory_mib: float, chunk_documents: int,
          out: Path) -> None:  # fmt: skip
    files = [DocumentFile(**item) for item in json.loads(files_json.read_text())]
    config = MinHashConfig()
    if mode == "single":
        baseline = reset_peak()
        started = time.perf_counter()
        documents = CandidateDocuments.of_files([(f.path, f.source) for f in files], config)
        report = find_duplicates(documents, config)
        seconds = time.perf_counter() - started
        result = {"worker_peak_kib": [memory_kib("VmHWM")], "worker_baseline_kib": [baseline]}
    else:
        from distributed import Client, LocalCluster

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          memory_limit=None, dashboard_address=None) as cluster, \
                Client(cluster) as client, tempfile.TemporaryDirectory() as spill:  # fmt: skip
            baselines = client.run(reset_peak)
            driver_baseline = reset_peak()
            started = time.perf_counter()
            settings = DistributedDedupSettings(worker_memory_bytes=int(memory_mib * 2**20),
                                                chunk_documents=chunk_documents)  # fmt: skip
            with StageWatch(client) as watch:
                report = find_duplicates_distributed(files, config, client, spill,
                                                     settings=settings)  # fmt: skip
            seconds = time.perf_counter() - started
        workers = sorted(baselines)
        result = {"worker_peak_kib": watch.worker_peaks(workers),
                  "worker_baseline_kib": [baselines[w] for w in workers],
                  "driver_peak_kib": memory_kib("VmHWM"), "driver_baseline_kib": driver_baseline,
                  "stages": [{"stage": s["stage"], "seconds": s["seconds"],
                              "peak_kib": [s["peak_kib"].get(w, 0) for w in workers]}
                             for s in watch.stages]}  # fmt: skip
    out.write_text(json.dumps({**result, "seconds": seconds, "stats": report.stats,
                               "digest": outcome_digest(report)}))  # fmt: skip


def dedup_code_digest(mode: str) -> str:
    """Digest of the dedup code `mode` runs (`lmforge.tasks.data`; without `dedup_dask` for the
    single process), comments and docstrings left out: a kept result is reused only by code
    that does the same."""
    package = Path(find_duplicates.__code__.co_filename).parent
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        if mode == "single" and "dedup_dask" in source.relative_to(package).parts:
            continue
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, DOCUMENTED) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):  # fmt: skip
                node.body = body[1:] or [ast.Pass()]
        digest.update(str(source.relative_to(package)).encode() + b"\0" + ast.dump(tree).encode())
    return digest.hexdigest()[:16]


def measure(mode: str, files: list[DocumentFile], workers: int, memory_mib: float,
            chunk_documents: int, scratch: Path, results: Path | None) -> dict:  # fmt: skip
    """One measurement in a child process, or the one kept in `results` for the same mode,
    workers, input files (another crawl of as many documents is another input), settings and
    dedup code."""
    documents = sum(f.documents for f in files)
    name = f"{mode}-w{workers}-{documents}-m{memory_mib:g}-c{chunk_documents}"
    inputs = hashlib.sha256(json.dumps([vars(f) for f in files]).encode()).hexdigest()[:8]
    kept = results / f"{name}-{inputs}-{dedup_code_digest(mode)}.json" if results else None
    if kept and kept.exists():
        print(f"{name}: kept result {kept}", file=sys.stderr, flush=True)
        return json.loads(kept.read_text())
    print(f"{name}: measuring ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
    files_json = scratch / f"files-{name}.json"
    files_json.write_text(json.dumps([vars(f) for f in files]))
    out = files_json.with_suffix(".out.json")
    command = [sys.executable, __file__, "--child", mode, str(files_json), str(workers),
               str(memory_mib), str(chunk_documents), str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{mode} x{workers} failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    print(f"{name}: {result['seconds']:,.1f} s", file=sys.stderr, flush=True)
    if kept:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(result))
    return result


# ---------------------------------------------------------------- tables


def mib(kib: float) -> str:
    return f"{kib / 1024:,.0f}"


def largest_growth(peaks: list[int], baselines: list[int]) -> int:
    """The largest peak RSS growth over the workers' baselines (KiB)."""
    return max(peak - base for peak, base in zip(peaks, baselines, strict=True))


def row(label: str, workers: int, result: dict, identical: str) -> str:
    docs = result["stats"]["documents"]
    peak = max(result["worker_peak_kib"])
    growth = largest_growth(result["worker_peak_kib"], result["worker_baseline_kib"])
    driver = mib(result["driver_peak_kib"]) if "driver_peak_kib" in result else "-"
    return (f"| {label} | {workers} | {docs:,} | {result['seconds']:,.1f} | "
            f"{docs / result['seconds']:,.0f} | {mib(peak)} | {mib(growth)} | {driver} | "
            f"{identical} |")  # fmt: skip


def stage_totals(result: dict) -> dict[str, tuple[float, int, int]]:
    """Per stage of a watched Dask run: (wall s, the largest worker's peak RSS growth KiB,
    times run); the connected components' star steps summed as one."""
    grouped: dict[str, tuple[float, int, int]] = {}
    for stage in result.get("stages", []):
        name = "star steps" if stage["stage"].startswith("star") else stage["stage"]
        growth = largest_growth(stage["peak_kib"], result["worker_baseline_kib"])
        seconds, peak, count = grouped.get(name, (0.0, 0, 0))
        grouped[name] = (seconds + stage["seconds"], max(peak, growth), count + 1)
    return grouped


def largest_stage(result: dict) -> str:
    """The stage where a watched Dask run's workers grew most ("-" when not watched)."""
    totals = stage_totals(result)
    return max(totals, key=lambda name: totals[name][1]) if totals else "-"


def print_stages(result: dict) -> None:
    """Table 4: wall time and the largest worker's peak RSS growth per stage."""
    grouped = stage_totals(result)
    print(f"\nTable 4: the Dask run at {result['stats']['documents']:,} documents, stage by "
          "stage\n\n| stage | wall s | share | peak RSS growth, largest worker MiB |\n"
          "|---|---:|---:|---:|")  # fmt: skip
    for name, (seconds, peak, count) in grouped.items():
        label = f"{name} ({count})" if count > 1 else name
        print(f"| {label} | {seconds:,.1f} | {seconds / result['seconds']:.0%} | "
              f"{mib(peak)} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--staging", type=Path, required="--child" not in sys.argv,
                        help="staged webdocs candidates (kept between runs)")  # fmt: skip
    parser.add_argument("--work", type=Path, help="the synthetic crawl's files (kept)")
    parser.add_argument("--docs", type=int, default=2_000_000)
    parser.add_argument("--workers", default="1,2", help="Dask worker counts, comma-separated")
    parser.add_argument("--worker-memory-mib", type=float, default=64.0,
                        help="partition budget per worker (small: partitions grow with data)")  # fmt: skip
    parser.add_argument("--small", action="store_true",
                        help="20,000 documents and a 1 MiB budget: checks the benchmark runs")  # fmt: skip
    parser.add_argument("--chunk-documents", type=int,
                        default=DistributedDedupSettings().chunk_documents,
                        help="most documents a signing task takes")  # fmt: skip
    parser.add_argument("--doublings", type=int, default=2,
                        help="table 2 measures --docs halved this many times too")  # fmt: skip
    parser.add_argument("--sizes", help="table 2's smaller sizes instead (documents, "
                                        "comma-separated; with --results, kept ones reused)")  # fmt: skip
    parser.add_argument("--results", type=Path,
                        help="keep each measurement here and reuse kept ones (resumable)")  # fmt: skip
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, files_json, workers, memory_mib, chunk_documents, out = args.child
        child(mode, Path(files_json), int(workers), float(memory_mib), int(chunk_documents),
              Path(out))  # fmt: skip
        return
    if args.small:
        args.docs, args.worker_memory_mib = 20_000, 1.0
    workers = [int(w) for w in args.workers.split(",")]
    candidates = stage_candidates(args.corpus, args.staging)
    work = args.work or args.staging / "distributed-crawl"
    files = build_crawl(candidates, args.docs, work)
    if args.sizes:
        sizes = sorted({int(size) for size in args.sizes.split(",")} | {args.docs})
        if sizes[-1] != args.docs:
            parser.error("--sizes must not exceed --docs")
    else:
        sizes = [math.ceil(args.docs / 2**k) for k in range(args.doublings, -1, -1)]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        # Dask first: it is the quicker, so a run stopped early has kept it.
        dask = {(w, size): measure("dask", first_documents(files, size), w,
                                   args.worker_memory_mib, args.chunk_documents, scratch,
                                   args.results)
                for w in sorted(workers, reverse=True)
                for size in (sizes if w == max(workers) else sizes[-1:])}  # fmt: skip
        single = {size: measure("single", first_documents(files, size), 1, 0, 0, scratch,
                                args.results)
                  for size in sizes}  # fmt: skip

    def same(result: dict, size: int) -> str:
        return "yes" if result["digest"] == single[size]["digest"] else "NO"

    header = ("| path | workers | documents | wall s | docs/s | peak RSS per worker MiB | "
              "growth MiB | driver peak MiB | identical to one process |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---|")  # fmt: skip
    print(f"\nTable 1: {args.docs:,} documents ({os.cpu_count()} cores, partition budget "
          f"{args.worker_memory_mib:g} MiB per worker, chunks of at most "
          f"{args.chunk_documents:,} documents)\n\n{header}")  # fmt: skip
    print(row("single process", 1, single[args.docs], "-"))
    for w in workers:
        print(row("dask", w, dask[(w, args.docs)], same(dask[(w, args.docs)], args.docs)))
    most = max(workers)
    print(f"\nTable 2: peak RSS growth per worker as the corpus grows (dask: {most} workers)\n")
    print("| documents | single process growth MiB | dask growth per worker MiB | largest in | "
          "identical |\n|---:|---:|---:|---|---|")  # fmt: skip
    for size in sizes:
        one, many = single[size], dask[(most, size)]
        one_growth = largest_growth(one["worker_peak_kib"], one["worker_baseline_kib"])
        many_growth = largest_growth(many["worker_peak_kib"], many["worker_baseline_kib"])
        print(f"| {size:,} | {mib(one_growth)} | {mib(many_growth)} | {largest_stage(many)} | "
              f"{same(many, size)} |")  # fmt: skip
    measured = dask[(most, args.docs)]
    per_document = measured["seconds"] * most / args.docs  # worker-seconds per document
    print(f"\nTable 3: extrapolated wall time at {per_document * 1e3:.2f} worker-ms per "
          f"document (dask, {most} workers), {WORKERS_PER_MACHINE} workers per machine\n")  # fmt: skip
    print("| documents | " + " | ".join(f"{m} machines" for m in MACHINES) + " |")
    print("|---:|" + "---:|" * len(MACHINES))
    for documents in SNAPSHOTS:
        hours = [documents * per_document / (m * WORKERS_PER_MACHINE) / 3600 for m in MACHINES]
        print(f"| {documents:,} | " + " | ".join(f"{h:,.1f} h" for h in hours) + " |")
    if stage_totals(measured):  # results kept before the stages were watched have none
        print_stages(measured)


if __name__ == "__main__":
    main()
