"""The fastText quality classifier on the labelled webdocs corpus, and what it costs.

    python bench/quality_classifier.py [--corpus ../shared/corpus/webdocs] [--workers 2]

1. Every WARC file goes through the per-file steps twice (a process pool, no dedup): with the
   default heuristic filters, and with them off (the text of every extractable page).
2. Pages are split by a hash of their URL into a training half and an unseen half. On the
   training half the classifier learns positives = pages the heuristic filters kept (labelled
   junk excepted) against negatives = labelled junk + pages the filters removed
   (`lmforge quality train`'s code, default settings).
3. Target: on the unseen half it separates labelled doc pages from junk at ROC AUC >= 0.95.
4. Target: on the whole corpus, used after the heuristic filters at its default threshold, it
   costs <= 3 points of doc pages kept (before dedup).
Quality numbers are deterministic (seeded); no timing is reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.quality.classifier import QualityClassifier
from lmforge.tasks.data.quality.train import QualityTrainConfig, roc_auc, train_quality_classifier
from lmforge.tasks.data.steps.quality_classifier import DEFAULT_THRESHOLD
from lmforge.tasks.data.warc_processing import process_warc_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_quality import DEFAULT_CORPUS, read_labels  # noqa: E402

HEURISTICS = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")
TARGETS = {"unseen_auc": 0.95, "doc_points_lost": 3.0}


def _candidates(args: tuple[str, dict, str]) -> dict[str, str]:
    path, config, staging = args
    result = process_warc_file(path, DataConfig.from_dict(config), staging)
    table = pq.read_table(result.candidates_path, columns=["url", "text"])
    return dict(zip(table.column("url").to_pylist(), table.column("text").to_pylist()))


def candidate_texts(files: list[Path], config: DataConfig, workers: int, scratch: Path):
    """{url: extracted text} of every page the per-file steps keep under `config`."""
    staging = tempfile.mkdtemp(dir=scratch)
    jobs = [(str(path), config.to_dict(), staging) for path in files]
    texts: dict[str, str] = {}
    with ProcessPoolExecutor(workers) as pool:
        for found in pool.map(_candidates, jobs):
            texts.update(found)
    return texts


def unseen(url: str) -> bool:
    return hashlib.sha256(url.encode()).digest()[0] % 2 == 1


def write_texts(path: Path, texts: list[str]) -> Path:
    pq.write_table(pa.table({"text": texts}), path)
    return path


def measure(corpus: Path, workers: int, scratch: Path) -> dict:
    labels, _ = read_labels(corpus)
    files = sorted(corpus.glob("*.warc.gz"))
    kept = candidate_texts(files, DataConfig(), workers, scratch)
    everything = candidate_texts(files, DataConfig(**dict.fromkeys(HEURISTICS)), workers, scratch)
    kind = {url: labels.get(url, {}).get("kind") for url in everything}
    train = [url for url in everything if not unseen(url)]
    positives = [everything[u] for u in train if u in kept and kind[u] != "junk"]
    negatives = [everything[u] for u in train if u not in kept or kind[u] == "junk"]
    model_dir = scratch / "model"
    trained = train_quality_classifier(
        [write_texts(scratch / "positive.parquet", positives)],
        [write_texts(scratch / "negative.parquet", negatives)], model_dir, QualityTrainConfig()
    )  # fmt: skip
    classifier = QualityClassifier.load(model_dir)
    scores = {url: classifier.score(text) for url, text in everything.items()}
    test = [u for u in everything if unseen(u) and kind[u] in ("doc", "junk")]
    labels_test = np.array([kind[u] == "doc" for u in test])
    auc = roc_auc(labels_test, np.array([scores[u] for u in test]))
    threshold = DEFAULT_THRESHOLD
    doc_pages = sum(1 for row in labels.values() if row["kind"] == "doc")
    junk_pages = sum(1 for row in labels.values() if row["kind"] == "junk")
    docs_kept = [u for u in kept if kind.get(u) == "doc"]
    docs_after = [u for u in docs_kept if scores[u] >= threshold]
    junk_kept = [u for u in kept if kind.get(u) == "junk"]
    junk_after = [u for u in junk_kept if scores[u] >= threshold]
    return {
        "train": {"positives": len(positives), "negatives": len(negatives)},
        "heldout_of_training": trained.metrics.auc,
        "unseen": {"doc": int(labels_test.sum()), "junk": int((~labels_test).sum())},
        "unseen_auc": auc,
        "threshold": threshold,
        "doc_pages": doc_pages,
        "docs_kept_heuristics": len(docs_kept) / doc_pages,
        "docs_kept_with_classifier": len(docs_after) / doc_pages,
        "doc_points_lost": 100 * (len(docs_kept) - len(docs_after)) / doc_pages,
        "junk_removed_heuristics": 1 - len(junk_kept) / junk_pages,
        "junk_removed_with_classifier": 1 - len(junk_after) / junk_pages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-quality-") as scratch:
        results = measure(args.corpus, args.workers, Path(scratch))
    print(f"trained on {results['train']['positives']} positives, "
          f"{results['train']['negatives']} negatives")  # fmt: skip
    print("| measure | value | target |")
    print("|---|---:|---:|")
    print(f"| ROC AUC, doc pages vs junk, unseen half ({results['unseen']['doc']} doc, "
          f"{results['unseen']['junk']} junk) | {results['unseen_auc']:.3f} | >= "
          f"{TARGETS['unseen_auc']} |")  # fmt: skip
    print(f"| ROC AUC, its own held-out split | {results['heldout_of_training']:.3f} | |")
    print(f"| doc pages kept, heuristics | {100 * results['docs_kept_heuristics']:.1f}% | |")
    print(f"| doc pages kept, heuristics + classifier at {results['threshold']} | "
          f"{100 * results['docs_kept_with_classifier']:.1f}% | |")  # fmt: skip
    print(f"| doc pages lost to the classifier | {results['doc_points_lost']:.2f} points | <= "
          f"{TARGETS['doc_points_lost']} |")  # fmt: skip
    print(f"| junk removed, heuristics | {100 * results['junk_removed_heuristics']:.1f}% | |")
    print(f"| junk removed, heuristics + classifier | "
          f"{100 * results['junk_removed_with_classifier']:.1f}% | |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    met = (results["unseen_auc"] >= TARGETS["unseen_auc"]
           and results["doc_points_lost"] <= TARGETS["doc_points_lost"])  # fmt: skip
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
