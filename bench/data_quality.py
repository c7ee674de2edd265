"""Measure the data stage against the labelled webdocs corpus and print a table.

    python bench/data_quality.py                      # run the stage on ../shared/corpus/webdocs
    python bench/data_quality.py --data DATA          # score an existing data_refresh output

Targets: junk removed >= 97%; doc pages surviving every stage before dedup >= 85%; language
agreement on kept docs >= 95% (pages labelled `mixed` or `und` are not scored); dedup precision
and recall against `dup_group`, counted both per removal and per pair.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
from lmforge.tasks.data_config import DataConfig
from lmforge.tasks.data_refresh import refresh_dataset
from lmforge.tasks.dedup import normalised_text_key

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "webdocs"
# Labels come from CLD2 with regional variants; fastText gives the macrolanguage (Norwegian `no`
# for Bokmål `nb`) or the bare language (`pt` for `pt-br`, `zh` for `zh-cn`).
LABEL_ALIASES = {"nb": "no", "nn": "no"}
TARGETS = {"junk_removed": 0.97, "docs_kept_before_dedup": 0.85, "language_agreement": 0.95}


def normalise_label(lang: str) -> str:
    base = lang.lower().split("-")[0]
    return LABEL_ALIASES.get(base, base)


def read_labels(corpus: Path) -> tuple[dict[str, dict[str, str]], Counter[str]]:
    """Labels by URL, and how many responses each URL has (robots.txt, images and redirects
    recur on several hosts' crawls; their rows agree on everything scored here)."""
    with open(corpus / "labels.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    by_url: dict[str, dict[str, str]] = {}
    for row in rows:
        known = by_url.setdefault(row["url"], row)
        if (known["kind"], known["lang"], known["dup_group"]) != (
            row["kind"],
            row["lang"],
            row["dup_group"],
        ):
            sys.exit(f"labels.tsv disagrees with itself about {row['url']}")
    return by_url, Counter(row["url"] for row in rows)


def read_parts(directory: Path, columns: list[str]) -> list[dict]:
    rows: list[dict] = []
    for part in sorted(directory.glob("part-*.parquet")):
        rows.extend(pq.read_table(part, columns=columns).to_pylist())
    return rows


def ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def score(
    data: Path,
    labels: dict[str, dict[str, str]],
    responses_per_url: Counter[str],
    text_keys: dict[str, bytes] | None = None,
) -> dict[str, object]:
    docs = read_parts(data / "docs", ["id", "url", "lang"])
    removed = read_parts(data / "removed", ["id", "url", "stage", "reason", "duplicate_of"])
    kept_urls = {row["url"] for row in docs}
    removed_by_url = {row["url"]: row for row in removed}
    output_per_url = Counter(row["url"] for row in docs + removed)
    unlabelled = set(output_per_url) - set(labels)
    missing = sum((responses_per_url - output_per_url).values())

    kinds = Counter(labels[url]["kind"] for url in responses_per_url.elements())
    junk_urls = [url for url, row in labels.items() if row["kind"] == "junk"]
    doc_urls = [url for url, row in labels.items() if row["kind"] == "doc"]
    junk_removed = sum(url in removed_by_url for url in junk_urls)
    junk_stage = Counter(removed_by_url[url]["stage"] for url in junk_urls if url in removed_by_url)

    def passed_filters(url: str) -> bool:
        return url in kept_urls or removed_by_url.get(url, {}).get("stage") == "dedup"

    docs_passed = sum(passed_filters(url) for url in doc_urls)
    doc_losses = Counter(
        f"{removed_by_url[url]['stage']}:{removed_by_url[url]['reason']}"
        for url in doc_urls
        if url in removed_by_url and not passed_filters(url)
    )

    scored = agree = 0
    confusions: Counter[tuple[str, str]] = Counter()
    for row in docs:
        label = labels.get(row["url"])
        if label is None or label["lang"] in ("mixed", "und") or label["kind"] != "doc":
            continue
        scored += 1
        truth = normalise_label(label["lang"])
        if row["lang"] == truth:
            agree += 1
        else:
            confusions[(truth, row["lang"])] += 1

    # Dedup is scored among documents that reached it, against the labelled groups and against
    # the groups with identical texts merged (see `merge_identical_texts`).
    dedup_removed = [row for row in removed if row["stage"] == "dedup"]
    reached = [url for url in kept_urls | set(removed_by_url) if passed_filters(url)]
    url_of = {row["id"]: row["url"] for row in docs + removed}
    group_of = {url: labels[url]["dup_group"] for url in reached}
    dedup = dedup_scores(group_of, dedup_removed, url_of)
    if text_keys is not None:
        merged = merge_identical_texts(group_of, text_keys)
        corrected = dedup_scores(merged, dedup_removed, url_of)
        dedup.update({f"{key}_identical_merged": value for key, value in corrected.items()})

    return {
        "responses": sum(responses_per_url.values()),
        "kinds": dict(kinds),
        "unlabelled_outputs": len(unlabelled),
        "unaccounted_responses": missing,
        "kept": len(docs),
        "junk_removed": ratio(junk_removed, len(junk_urls)),
        "junk_removed_by_stage": dict(junk_stage),
        "docs_kept_before_dedup": ratio(docs_passed, len(doc_urls)),
        "doc_losses": doc_losses,
        "language_agreement": ratio(agree, scored),
        "language_scored": scored,
        "language_confusions": confusions,
        "dedup_removed": len(dedup_removed),
        "dedup_reached": len(reached),
        **dedup,
    }


def dedup_scores(
    group_of: dict[str, str], dedup_removed: list[dict], url_of: dict[str, str]
) -> dict[str, float]:
    """Removal precision (the survivor is in the removed page's group), removal recall (correct
    removals over the group sizes minus one), and pairwise precision and recall of the clusters."""
    correct = sum(group_of[row["url"]] == group_of[url_of[row["duplicate_of"]]]
                  for row in dedup_removed)  # fmt: skip
    by_group: defaultdict[str, list[str]] = defaultdict(list)
    for url, group in group_of.items():
        by_group[group].append(url)
    expected = sum(len(urls) - 1 for urls in by_group.values())
    clusters: defaultdict[str, set[str]] = defaultdict(set)
    for row in dedup_removed:
        survivor = url_of[row["duplicate_of"]]
        clusters[survivor].update((survivor, row["url"]))
    predicted = {frozenset(p) for m in clusters.values() for p in itertools.combinations(m, 2)}
    true = {frozenset(p) for m in by_group.values() for p in itertools.combinations(m, 2)}
    return {
        "dedup_expected_removals": expected,
        "dedup_removal_precision": ratio(correct, len(dedup_removed)),
        "dedup_removal_recall": ratio(min(correct, expected), expected),
        "dedup_pair_precision": ratio(len(predicted & true), len(predicted)),
        "dedup_pair_recall": ratio(len(predicted & true), len(true)),
    }


def merge_identical_texts(group_of: dict[str, str], text_keys: dict[str, bytes]) -> dict[str, str]:
    """The labelled groups, joined wherever two pages have identical extracted text.

    The labels split identical texts: an untranslated handbook page under a zh/ja/ko locale was
    shingled by characters and its copies under other locales by words, so byte-identical
    pages sit in different groups. Identical text is a duplicate by any definition."""
    parent = {group: group for group in group_of.values()}

    def find(group: str) -> str:
        while parent[group] != group:
            group = parent[group]
        return group

    first_group_with_key: dict[bytes, str] = {}
    for url, group in group_of.items():
        key = text_keys.get(url)
        if key is None:
            continue
        other = first_group_with_key.setdefault(key, group)
        parent[find(group)] = find(other)
    return {url: find(group) for url, group in group_of.items()}


def staged_text_keys(staging: Path) -> dict[str, bytes]:
    """Normalised-text digests of every document that reached dedup, by URL."""
    keys: dict[str, bytes] = {}
    for path in sorted(staging.glob("*.candidates.parquet")):
        for row in pq.read_table(path, columns=["url", "text"]).to_pylist():
            keys[row["url"]] = normalised_text_key(row["text"])
    return keys


def print_table(results: dict[str, object], seconds: float | None) -> None:
    def line(name: str, value: str, target: str = "") -> None:
        print(f"  {name:<34} {value:>12}  {target}")

    print(f"data_quality: {results['responses']} labelled responses {results['kinds']}")
    line("kept documents", str(results["kept"]))
    for key, target in TARGETS.items():
        value = results[key]
        verdict = "ok" if value >= target else "BELOW TARGET"
        line(key.replace("_", " "), f"{value:.2%}", f">= {target:.0%} {verdict}")
    line("language docs scored", str(results["language_scored"]))
    line("docs reaching dedup", str(results["dedup_reached"]))
    line("dedup removals", str(results["dedup_removed"]))
    for suffix, title in (("", "labelled groups"), ("_identical_merged", "identical texts merged")):
        if f"dedup_expected_removals{suffix}" not in results:
            continue
        print(f"  dedup vs {title}:")
        line("  expected removals", str(results[f"dedup_expected_removals{suffix}"]))
        for key in ("removal_precision", "removal_recall", "pair_precision", "pair_recall"):
            line("  " + key.replace("_", " "), f"{results[f'dedup_{key}{suffix}']:.2%}")
    line("responses not accounted", str(results["unaccounted_responses"]))
    if seconds is not None:
        line("wall time (s)", f"{seconds:.1f}")
        line("responses per second", f"{results['responses'] / seconds:.0f}")
    print("  junk removed by stage:", results["junk_removed_by_stage"])
    print("  doc pages lost before dedup, by reason:")
    for reason, count in results["doc_losses"].most_common(12):
        print(f"    {reason:<48} {count:>6}")
    print("  language confusions (label -> predicted):")
    for (truth, predicted), count in results["language_confusions"].most_common(8):
        print(f"    {truth} -> {predicted:<10} {count:>6}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--data", type=Path, help="score this data_refresh output instead")
    parser.add_argument("--out", type=Path, help="where to write the dataset (default: temp)")
    parser.add_argument("--staging", type=Path, help="staged candidates of --data, if kept")
    args = parser.parse_args(argv)
    if not (args.corpus / "labels.tsv").is_file():
        parser.error(f"{args.corpus} has no labels.tsv (pass --corpus)")
    labels, responses_per_url = read_labels(args.corpus)
    logging.basicConfig(level=logging.WARNING)
    seconds = None
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as scratch:
        data, staging = args.data, args.staging
        if data is None:
            data = args.out or Path(scratch) / "data"
            staging = Path(scratch) / "staging"
            started = time.perf_counter()
            refresh_dataset([str(args.corpus / "*.warc.gz")], data, DataConfig(), staging)
            seconds = time.perf_counter() - started
        keys = staged_text_keys(staging) if staging is not None else None
        results = score(data, labels, responses_per_url, keys)
    print_table(results, seconds)
    met = all(results[key] >= target for key, target in TARGETS.items())
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
