"""Benchmark near-duplicate removal on the labelled webdocs corpus: quality, speed and memory,
lmforge against datatrove's MinHash pipeline measured in the same run.

    python bench/dedup.py --staging /tmp/$USER-dedup-staging \
        --datatrove-python /tmp/dtvenv/bin/python [--replicas 1,2,4]

Input: the documents that reach dedup in the data stage. Every WARC file is run through
`process_warc_file` (default `DataConfig`) once; `--staging DIR` keeps those candidates parquet
files so that later runs skip extraction. lmforge sees them file by file, in file-name order,
as the data stage does.

Quality, table 1. lmforge runs twice, once per `MinHashConfig.shingle_language`: `detected`
(the default: a page is shingled by the language fastText finds in its text) and `declared`
(by the language the page is published under - header, `<html lang>`, URL locale - falling back
to the detected one). The labels shingle a page by the locale it is published under, so an
English page left untranslated in the Korean handbook is compared by characters and is not a
copy of the same English page in the English handbook: `declared` is the setting that follows
the labels' definition. Each peer is scored
- against `labels.tsv` (documents sharing a `dup_group` are copies). A *removal* is correct
  when the survivor it was removed in favour of is in its `dup_group`. Removal precision =
  correct removals / removals; removal recall = correct removals / expected removals (a group
  of n documents that reached dedup expects n - 1). Pair precision/recall compare the pairs
  inside predicted clusters with the pairs inside labelled groups (`bench/data_quality.py`'s
  `dedup_scores`, so both benchmarks agree);
- against groups derived by the labels' own rule from the text lmforge deduplicates: pairs with
  exact Jaccard >= 0.8 over `lmforge.tasks.data.dedup.shingles` (each way of choosing the shingle
  language), computed by brute force for *every* pair of documents (a sparse document x shingle
  matrix times its transpose), closed transitively.
The rows "brute-force Jaccard >= 0.8 (ceiling)" are those perfect clusterings themselves: what
any deduplicator at this threshold could reach against each grouping. Missed = pairs at >= 0.8
that do not end up in one cluster; removed pairs below 0.8 = (removed, survivor) pairs whose
Jaccard is below 0.8 (a cluster joined transitively, A~B~C, can legitimately hold one). It also
checks, for both settings, that deduplicating the first half of the files, then the second half
against the first half's kept documents, removes exactly what one run does.

Speed, table 2: documents/second for signatures + candidate pairs + clusters (lmforge:
`find_duplicates`, which also verifies candidates; datatrove: MinhashDedupSignature ->
MinhashDedupBuckets -> MinhashDedupCluster on one local task, the same documents as JSONL,
5-grams, 14 bands x 8 hashes). Each side runs in its own subprocess; its peak RSS comes from
`os.wait4`. Imports and interpreter start-up are not timed for either side. datatrove lives in
its own venv (`--datatrove-python`); without it only lmforge is measured. Set it up with:

    python3 -m venv /tmp/dtvenv
    /tmp/dtvenv/bin/pip install "datatrove[processing]==0.10.*" orjson "spacy>=3.7,<4"

Memory, table 3: lmforge on 1, 2, 4 ... distinct replicas of the corpus (ids suffixed, every
word marked per replica, so the duplicate structure repeats and nothing is shared across
replicas): peak RSS growth over the process's baseline, and the size of the dedup index of the
kept documents in memory and as Parquet; slopes per 100k documents by least squares.
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
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.warc_processing import process_warc_file
from lmforge.tasks.data.dedup import (
    DedupDocument,
    KeptSignatures,
    MinHashConfig,
    find_duplicates,
    shingles,
)
from lmforge.tasks.data.dedup_index import index_table
from scipy import sparse

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "webdocs"
SPEED_TARGET = 2.0
QUALITY_TARGETS = {"precision": 0.98, "recall": 0.95}
THRESHOLD = MinHashConfig().threshold
STAGED_COLUMNS = ["id", "url", "text", "lang", "declared_lang", "warc_file"]
SHINGLE_LANGUAGES = ("detected", "declared")


# ---------------------------------------------------------------- input documents


def stage_candidates(corpus: Path, staging: Path) -> Path:
    """All candidates (`STAGED_COLUMNS`) in one parquet file, in input order, extracting each
    WARC only when its staged candidates are not there yet (or were staged without a column)."""
    merged = staging / "all-with-files.candidates.parquet"
    if merged.exists() and set(STAGED_COLUMNS) <= set(pq.read_schema(merged).names):
        return merged
    staging.mkdir(parents=True, exist_ok=True)
    warcs = sorted(corpus.glob("*.warc.gz"))
    if not warcs:
        sys.exit(f"no *.warc.gz in {corpus}: pass --corpus")
    config = DataConfig()
    tables = []
    for warc in warcs:
        staged = staging / f"{warc.name.removesuffix('.warc.gz')}.candidates.parquet"
        if not staged.exists() or not set(STAGED_COLUMNS) <= set(pq.read_schema(staged).names):
            started = time.perf_counter()
            result = process_warc_file(warc, config, staging)
            print(f"  staged {warc.name}: {result.stats['candidates']} candidates "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)  # fmt: skip
            staged = Path(result.candidates_path)
        tables.append(pq.read_table(staged, columns=STAGED_COLUMNS))
    partial = merged.with_suffix(".tmp")
    pq.write_table(pa.concat_tables(tables), partial)
    partial.rename(merged)  # a crash never leaves a merged file that looks whole
    return merged


class ParquetDocuments:
    """The candidates as DedupDocuments, re-readable (find_duplicates iterates twice), each
    shingled by the language `config.shingle_language` picks, as the data stage does.

    `replica` > 0 gives a distinct copy of the corpus with the same duplicate structure: ids
    get a suffix and every word a replica mark, so no shingle is shared across replicas."""

    def __init__(self, path: Path, replicas: int = 1, config: MinHashConfig = MinHashConfig()):
        self.path = path
        self.replicas = replicas
        self.config = config

    def __iter__(self) -> Iterator[DedupDocument]:
        for replica in range(self.replicas):
            columns = ["id", "text", "lang", "declared_lang", "warc_file"]
            # Small batches: the reader must not hold the corpus's text (memory is measured).
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=256, columns=columns):
                for row in batch.to_pylist():
                    text, doc_id = row["text"], row["id"]
                    lang = self.config.shingle_language_of(row["lang"], row["declared_lang"])
                    if replica:
                        doc_id = f"{doc_id}#{replica}"
                        text = mark_words(text, replica, lang)
                    yield DedupDocument(doc_id, text, lang, f"{replica}/{row['warc_file']}")


def mark_words(text: str, replica: int, lang: str | None) -> str:
    """The text made distinct for a replica: a mark after every word (every character for
    languages shingled by characters), keeping which documents are copies of which."""
    mark = f"~{replica}"
    if lang in MinHashConfig().char_shingle_languages:
        return mark.join(text) + mark
    return " ".join(word + mark for word in text.split())


# ---------------------------------------------------------------- the two peers, in subprocesses


def memory_kib(field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak) of this process from /proc, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def lmforge_worker(candidates: Path, out: Path, replicas: int = 1,
                   shingle_language: str = "detected") -> None:  # fmt: skip
    """Runs in the child: find_duplicates over the candidates (`replicas` distinct copies of
    them, shingled by `shingle_language`), results, timings and the size of the index it would
    add to `out`.

    The per-process code point tables are built first (a fixed ~0.3 s, ~100 MiB cost, charged
    to the timed run's peak RSS anyway) and the peak is then reset, so the growth reported per
    document is what dedup itself holds."""
    shingles("warm up the code point tables", None, MinHashConfig())
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    baseline_kib = memory_kib("VmRSS")
    started = time.perf_counter()
    config = MinHashConfig(shingle_language=shingle_language)
    report = find_duplicates(ParquetDocuments(candidates, replicas, config), config)
    seconds = time.perf_counter() - started
    peak_kib = memory_kib("VmHWM")
    kept = report.kept
    n = len(kept.ids)
    index = index_table(kept, range(n), ["en"] * n, ["docs/lang=en/part-v00001-00000.parquet"] * n,
                        range(n), MinHashConfig())  # fmt: skip
    index_path = out.with_suffix(".index.parquet")
    pq.write_table(index, index_path)
    removed = [{"id": d.id, "duplicate_of": d.duplicate_of} for d in report.duplicates]
    out.write_text(json.dumps({"seconds": seconds, "baseline_rss_kib": baseline_kib,
                               "dedup_peak_rss_kib": peak_kib,
                               "documents": report.stats["documents"],
                               "kept": n, "index_file_bytes": index_path.stat().st_size,
                               "index_memory_bytes": kept.keys.nbytes + kept.bands.nbytes
                               + kept.has_bands.nbytes,
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


def similar_pairs(
    candidates: Path, config: MinHashConfig, floor: float = 0.5
) -> dict[tuple[int, int], float]:
    """Exact Jaccard of every document pair at or above `floor`, by brute force: the binary
    document x shingle matrix times its transpose counts each pair's shared shingles."""
    sets = [shingles(d.text, d.lang, config) for d in ParquetDocuments(candidates, 1, config)]
    sizes = np.array([len(s) for s in sets], dtype=np.int64)
    columns = np.concatenate(sets) if sets else np.zeros(0, np.uint64)
    _, column_index = np.unique(columns, return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), sizes)
    matrix = sparse.csr_matrix(
        (np.ones(len(rows), np.int32), (rows, column_index)),
        shape=(len(sets), column_index.max() + 1),
    )
    transposed = matrix.T.tocsc()
    found: dict[tuple[int, int], float] = {}
    for start in range(0, len(sets), 256):  # row blocks keep the product's memory small
        block = (matrix[start : start + 256] @ transposed).tocoo()
        a, b, common = block.row + start, block.col, block.data
        keep = a < b
        a, b, common = a[keep], b[keep], common[keep]
        similarity = common / (sizes[a] + sizes[b] - common)
        close = similarity >= floor
        for i, j, s in zip(a[close], b[close], similarity[close]):
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


class KeptInMemory:
    """`PriorDocuments` over a report's kept documents, texts held in memory (bench only: the
    data stage reads them back from `docs/` through `DedupIndex`)."""

    def __init__(self, kept: KeptSignatures, documents: dict[str, DedupDocument],
                 config: MinHashConfig):  # fmt: skip
        self.keys, self.bands, self.has_bands = kept.keys, kept.bands, kept.has_bands
        self._ids = kept.ids
        self._documents = documents
        self._config = config

    def ids(self, rows: list[int]) -> list[str]:
        return [self._ids[row] for row in rows]

    def shingle_sets(self, rows: list[int]) -> dict[int, np.ndarray]:
        documents = {row: self._documents[self._ids[row]] for row in rows}
        return {row: shingles(d.text, d.lang, self._config) for row, d in documents.items()}


def incremental_removals(candidates: Path, config: MinHashConfig) -> list[dict]:
    """Removals when the first half of the files is deduplicated first and the second half
    later against the first half's kept documents (what two refreshes do)."""
    documents = list(ParquetDocuments(candidates, 1, config))
    sources = sorted({d.source for d in documents})
    older = [d for d in documents if d.source in sources[: len(sources) // 2]]
    newer = [d for d in documents if d.source not in sources[: len(sources) // 2]]
    first = find_duplicates(older, config)
    prior = KeptInMemory(first.kept, {d.id: d for d in older}, config)
    second = find_duplicates(newer, config, prior)
    return [{"id": d.id, "duplicate_of": d.duplicate_of}
            for d in first.duplicates + second.duplicates]  # fmt: skip


def jaccard_groups(ids: list[str], similar: dict[tuple[int, int], float]) -> list[int]:
    """Group number per document: pairs at exact Jaccard >= threshold, closed transitively -
    the labels' own definition applied to the text lmforge deduplicates."""
    parent = list(range(len(ids)))

    def find(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for (a, b), similarity in similar.items():
        if similarity >= THRESHOLD:
            root_a, root_b = find(a), find(b)
            parent[max(root_a, root_b)] = min(root_a, root_b)
    return [find(i) for i in range(len(ids))]


def growth_slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of value against documents, per 100k documents."""
    docs = np.array([p[0] for p in points], float)
    values = np.array([p[1] for p in points], float)
    if len(points) < 2 or np.ptp(docs) == 0:
        return float("nan")
    return float(np.polyfit(docs, values, 1)[0] * 100_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--staging", type=Path, help="keep staged candidates here between runs")
    parser.add_argument("--datatrove-python", default="/tmp/dtvenv/bin/python")
    parser.add_argument("--replicas", default="1,2,4",
                        help="corpus copies for the memory slope (comma-separated)")
    parser.add_argument("--lmforge-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lmforge_worker:
        candidates, out, replicas, shingle_language = args.lmforge_worker
        lmforge_worker(Path(candidates), Path(out), int(replicas), shingle_language)
        return

    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as scratch_name:
        scratch = Path(scratch_name)
        candidates = stage_candidates(args.corpus, args.staging or scratch / "staging")
        table = pq.read_table(candidates, columns=["id", "url"]).to_pylist()
        ids = [row["id"] for row in table]
        url_of = {row["id"]: row["url"] for row in table}
        position = {doc_id: i for i, doc_id in enumerate(ids)}
        print(f"{len(ids)} candidate documents from {args.corpus}", file=sys.stderr)

        def run_lmforge(replicas: int, mode: str) -> tuple[dict, float, int]:
            out = scratch / f"lmforge-{mode}-{replicas}.json"
            command = [sys.executable, __file__, "--lmforge-worker", str(candidates), str(out),
                       str(replicas), mode]  # fmt: skip
            return run_measured(command, out)

        # peer -> (removals, work s, wall s, peak RSS KiB, shingle language its pairs are in)
        results: dict[str, tuple] = {}
        lm_runs = {}
        for mode in SHINGLE_LANGUAGES:
            run, wall, rss = run_lmforge(1, mode)
            lm_runs[mode] = run
            results[f"lmforge, {mode}"] = (run["removed"], run["seconds"], wall, rss, mode)
        lm = lm_runs["detected"]

        why_not = None
        if not Path(args.datatrove_python).exists():
            why_not = f"{args.datatrove_python} not found (see the docstring to set it up)"
        else:
            dt, dt_wall, dt_rss = run_datatrove(args.datatrove_python, candidates, scratch)
            results["datatrove"] = (datatrove_removals(dt, ids), dt["seconds"], dt_wall, dt_rss,
                                    "detected")  # fmt: skip

        scaling = [(1, lm)]
        for replicas in sorted({int(r) for r in args.replicas.split(",")} - {1}):
            scaling.append((replicas, run_lmforge(replicas, "detected")[0]))
            print(f"  {replicas} replicas measured", file=sys.stderr)

        labels, _ = read_labels(args.corpus)
        group_of = {url_of[i]: labels[url_of[i]]["dup_group"] for i in ids if url_of[i] in labels}
        started = time.perf_counter()
        similar, incremental = {}, {}
        for mode in SHINGLE_LANGUAGES:
            config = MinHashConfig(shingle_language=mode)
            similar[mode] = similar_pairs(candidates, config)
            incremental[mode] = incremental_removals(candidates, config)
        print(f"exact all-pairs Jaccard: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    groupings = {"labels.tsv": group_of}
    for mode in SHINGLE_LANGUAGES:
        by_jaccard = jaccard_groups(ids, similar[mode])
        oracle = [{"id": ids[i], "duplicate_of": ids[g]}
                  for i, g in enumerate(by_jaccard) if g != i]  # fmt: skip
        results[f"brute-force Jaccard >= 0.8, {mode} (ceiling)"] = (oracle, None, None, None, mode)
        groups = {url_of[ids[i]]: str(g) for i, g in enumerate(by_jaccard)}
        groupings[f"Jaccard >= 0.8 groups, {mode}"] = groups
    exact = {name: jaccard_scores(removals, similar[mode], position)
             for name, (removals, *_rest, mode) in results.items()}  # fmt: skip
    print(f"\n1. Quality on {len(ids)} documents (pairs with exact Jaccard >= {THRESHOLD}: "
          f"{exact['lmforge, detected']['true_pairs']} shingled by detected language, "
          f"{exact['lmforge, declared']['true_pairs']} by declared; expected removals by the "
          f"labels: {sum(len(m) - 1 for m in _members(group_of).values())})")  # fmt: skip
    header = ("peer, shingle language", "scored against", "removed", "removal P", "removal R",
              "pair P", "pair R", "missed >=0.8 pairs", "removed pairs <0.8", "<0.6")  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    scores = {}
    for name, (removals, *_rest) in results.items():
        for against, groups in groupings.items():
            labelled = [{"url": url_of[r["id"]], "duplicate_of": r["duplicate_of"]}
                        for r in removals if url_of[r["id"]] in groups
                        and url_of[r["duplicate_of"]] in groups]  # fmt: skip
            score, ex = dedup_scores(groups, labelled, url_of), exact[name]
            scores[name, against] = score
            print(f"| {name} | {against} | {len(removals)} | "
                  f"{percent(score['dedup_removal_precision'])} | "
                  f"{percent(score['dedup_removal_recall'])} | "
                  f"{percent(score['dedup_pair_precision'])} | "
                  f"{percent(score['dedup_pair_recall'])} | "
                  f"{ex['missed_true_pairs']} of {ex['true_pairs']} | "
                  f"{ex['removed_below_threshold']} of {ex['removed_pairs']} | "
                  f"{ex['removed_below_0.6']} |")  # fmt: skip
    print()
    for mode in SHINGLE_LANGUAGES:
        score = scores[f"lmforge, {mode}", "labels.tsv"]
        precision, recall = score["dedup_removal_precision"], score["dedup_removal_recall"]
        meets = (precision >= QUALITY_TARGETS["precision"]
                 and recall >= QUALITY_TARGETS["recall"])  # fmt: skip
        print(f"lmforge, shingle_language={mode}, against labels.tsv: removal precision "
              f"{percent(precision)}, recall {percent(recall)}: "
              f"{'meets' if meets else 'MISSES'} the {QUALITY_TARGETS['precision']:.0%} / "
              f"{QUALITY_TARGETS['recall']:.0%} targets")  # fmt: skip
    for mode in SHINGLE_LANGUAGES:
        same = sorted(map(str, incremental[mode])) == sorted(map(str, lm_runs[mode]["removed"]))
        print(f"lmforge, {mode}: first half of the files, then the second half against its kept "
              f"documents: {len(incremental[mode])} removals, "
              f"{'IDENTICAL to' if same else 'DIFFERENT from'} one run from scratch")  # fmt: skip

    print("\n2. Speed: signatures + candidate pairs + verification + clusters, one process each")
    print("| peer | work s | docs/s | wall s (with start-up) | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, (_, seconds, wall, rss, _mode) in results.items():
        if seconds is not None:
            print(f"| {name} | {seconds:.2f} | {len(ids) / seconds:,.0f} | {wall:.2f} | "
                  f"{rss / 1024:.0f} |")  # fmt: skip
    if "datatrove" in results:
        lm_seconds, lm_rss = results["lmforge, detected"][1], results["lmforge, detected"][3]
        ratio = results["datatrove"][1] / lm_seconds
        verdict = "meets" if ratio >= SPEED_TARGET else "MISSES"
        print(f"\nlmforge / datatrove speed: {ratio:.1f}x ({verdict} the {SPEED_TARGET:.0f}x "
              f"target); peak RSS ratio datatrove / lmforge: "
              f"{results['datatrove'][3] / lm_rss:.2f}")  # fmt: skip
    else:
        print(f"\ndatatrove not measured: {why_not}")

    print("\n3. lmforge memory against corpus size (distinct replicas of the corpus)")
    print("| replicas | documents | kept | docs/s | RSS growth MiB | index in memory MiB | "
          "index file MiB |\n|---|---|---|---|---|---|---|")
    growth, in_memory, on_disk = [], [], []
    for replicas, run in scaling:
        rss = max(run["dedup_peak_rss_kib"] - run["baseline_rss_kib"], 0) / 1024
        growth.append((run["documents"], rss))
        in_memory.append((run["documents"], run["index_memory_bytes"] / 2**20))
        on_disk.append((run["documents"], run["index_file_bytes"] / 2**20))
        print(f"| {replicas} | {run['documents']} | {run['kept']} | "
              f"{run['documents'] / run['seconds']:,.0f} | {rss:.0f} | "
              f"{in_memory[-1][1]:.1f} | {on_disk[-1][1]:.1f} |")  # fmt: skip
    print(f"\nslopes per 100k documents: RSS growth {growth_slope(growth):,.0f} MiB, index in "
          f"memory {growth_slope(in_memory):.1f} MiB, index file {growth_slope(on_disk):.1f} MiB "
          f"(fixed ~{lm['baseline_rss_kib'] / 1024:.0f} MiB of interpreter and tables excluded)")
    for mode in SHINGLE_LANGUAGES:
        print(f"lmforge stats, {mode}: {lm_runs[mode]['stats']}")


def _members(group_of: dict[str, str]) -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for url, group in group_of.items():
        members.setdefault(group, []).append(url)
    return members


if __name__ == "__main__":
    main()
