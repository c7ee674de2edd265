"""Measure the data stage against the labelled webdocs corpus and print a table.

    python bench/data_quality.py                      # run the stage on ../shared/corpus/webdocs
    python bench/data_quality.py --data DATA          # score an existing data_refresh output
    python bench/data_quality.py --dedup-shingle-language declared   # dedup as the labels do

Targets: junk removed >= 97%; doc pages surviving every stage before dedup >= 85%, overall and
per language and per source (the biggest losers listed with their reasons); language agreement
on kept docs >= 95% (pages labelled `mixed` or `und` are not scored; the disagreeing pages are
named); legacy-charset pages decoded exactly as their labelled charset decodes them; dedup
precision and recall against `dup_group`, counted both per removal and per pair. With a fresh
run it also prints every step's documents in/out and drop reasons (`merge_file_stats`).
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
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.refresh import resolve_inputs
from lmforge.tasks.data.stats import merge_file_stats
from lmforge.tasks.data.refresh import find_duplicates, write_dataset
from lmforge.tasks.data.dataset_versions import read_documents
from lmforge.tasks.data.dedup import SHINGLE_LANGUAGE_SOURCES, MinHashConfig, normalised_text_key
from lmforge.tasks.data.html_text import decode_page, python_codec
from lmforge.tasks.data.warc import WarcResponseReader
from lmforge.tasks.data.warc_processing import process_warc_file

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
    """Rows of every Parquet part under `directory`, `lang=xx/` partitions included."""
    if not any(directory.rglob("*.parquet")):
        return []
    return pq.read_table(directory, columns=columns).to_pylist()


def ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def score(
    data: Path,
    labels: dict[str, dict[str, str]],
    responses_per_url: Counter[str],
    text_keys: dict[str, bytes] | None = None,
) -> dict[str, object]:
    docs = read_documents(data, ["id", "url", "lang"]).to_pylist()  # docs/lang=xx/ parts
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

    def loss(url: str) -> str:
        return f"{removed_by_url[url]['stage']}:{removed_by_url[url]['reason']}"

    doc_losses = Counter(loss(url) for url in doc_urls if url in removed_by_url
                         and not passed_filters(url))  # fmt: skip
    by_language = kept_by_group(doc_urls, lambda u: labels[u]["lang"], passed_filters, loss)
    by_source = kept_by_group(doc_urls, lambda u: labels[u]["source"], passed_filters, loss)

    scored = agree = 0
    confusions: Counter[tuple[str, str]] = Counter()
    disagreeing: list[tuple[str, str, str]] = []
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
            disagreeing.append((truth, row["lang"], row["url"]))

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
        "docs_kept_by_language": by_language,
        "docs_kept_by_source": by_source,
        "language_disagreements": sorted(disagreeing),
        "language_agreement": ratio(agree, scored),
        "language_scored": scored,
        "language_confusions": confusions,
        "dedup_removed": len(dedup_removed),
        "dedup_reached": len(reached),
        **dedup,
    }


def kept_by_group(doc_urls, group_of, passed, loss) -> dict[str, dict[str, object]]:
    """Per group (a label's language or source): doc pages, how many passed the filters, and
    the reasons of the losses."""
    groups: dict[str, dict[str, object]] = {}
    for url in doc_urls:
        group = groups.setdefault(group_of(url), {"docs": 0, "kept": 0, "losses": Counter()})
        group["docs"] += 1
        if passed(url):
            group["kept"] += 1
        else:
            group["losses"][loss(url)] += 1
    return dict(sorted(groups.items()))


def check_decoding(corpus: Path, labels: dict[str, dict[str, str]]) -> dict[str, list[int]]:
    """For every `doc` page whose label names a legacy charset: does `decode_page` (header, then
    meta, then detection) give exactly the text the labelled charset gives? Returns
    {`charset:where`: [pages, exact]}."""
    results: dict[str, list[int]] = {}
    for path in sorted(corpus.glob("*.warc.gz")):
        for response in WarcResponseReader(path):
            label = labels.get(response.url)
            if label is None or label["kind"] != "doc" or response.status != 200:
                continue
            charset, _, _ = label["encoding"].partition(":")
            if charset in ("utf-8", ""):
                continue
            truth = response.body.decode(python_codec(charset), errors="replace")
            decoded = decode_page(response.body, response.charset).html
            counts = results.setdefault(label["encoding"], [0, 0])
            counts[0] += 1
            counts[1] += decoded == truth
    return dict(sorted(results.items()))


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
    print("  kept docs whose language disagrees with the label:")
    for truth, predicted, url in results["language_disagreements"][:20]:
        print(f"    {truth} -> {predicted:<4} {url}")
    target = TARGETS["docs_kept_before_dedup"]
    groupings = (("language label", "docs_kept_by_language"), ("source", "docs_kept_by_source"))
    for title, key in groupings:
        print(f"  doc pages kept by the filters, per {title} (* below {target:.0%}):")
        print_groups(results[key], target)


def print_groups(groups: dict[str, dict[str, object]], target: float) -> None:
    print(f"    {'group':<16} {'docs':>6} {'kept':>8}  biggest losses")
    for name, group in sorted(groups.items(), key=lambda item: item[1]["kept"] / item[1]["docs"]):
        share = group["kept"] / group["docs"]
        losses = ", ".join(f"{reason} {n}" for reason, n in group["losses"].most_common(3))
        flag = "*" if share < target else " "
        print(f"   {flag}{name:<16} {group['docs']:>6} {share:>8.1%}  {losses}")


def print_decoding(decoding: dict[str, list[int]]) -> None:
    pages = sum(total for total, _ in decoding.values())
    exact = sum(good for _, good in decoding.values())
    print(f"  legacy-charset doc pages decoded exactly as their labelled charset: "
          f"{exact} of {pages} ({ratio(exact, pages):.2%})")  # fmt: skip
    for encoding, (total, good) in decoding.items():
        if good < total:
            print(f"    {encoding:<24} {good} of {total}")


def print_steps(summary: dict[str, object]) -> None:
    print("  per step (documents in -> out, drop reasons):")
    for name, step in summary["steps"].items():
        top = sorted(step["dropped"].items(), key=lambda item: -item[1])[:4]
        reasons = ", ".join(f"{reason} {count}" for reason, count in top)
        print(f"    {name:<18} {step['docs_in']:>6} -> {step['docs_out']:>6}  "
              f"{step['bytes_in'] / 1e6:>8.1f} -> {step['bytes_out'] / 1e6:>7.1f} MB  {reasons}")


def run_stage(corpus: Path, out: Path, staging: Path, config: DataConfig) -> dict[str, object]:
    """The data stage step by step (as `refresh_dataset` runs it), keeping the per-file
    results so that their statistics can be merged and printed."""
    files = resolve_inputs([str(corpus / "*.warc.gz")])
    results = [process_warc_file(path, config, staging) for path in files]
    write_dataset(results, find_duplicates(results, config), out, config)
    return merge_file_stats(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--data", type=Path, help="score this data_refresh output instead")
    parser.add_argument("--out", type=Path, help="where to write the dataset (default: temp)")
    parser.add_argument("--staging", type=Path, help="staged candidates of --data, if kept")
    parser.add_argument("--dedup-shingle-language", choices=SHINGLE_LANGUAGE_SOURCES,
                        default="detected", help="MinHashConfig.shingle_language of the run "
                        "(declared: the labels' definition of copies)")  # fmt: skip
    args = parser.parse_args(argv)
    if not (args.corpus / "labels.tsv").is_file():
        parser.error(f"{args.corpus} has no labels.tsv (pass --corpus)")
    labels, responses_per_url = read_labels(args.corpus)
    logging.basicConfig(level=logging.WARNING)
    seconds = step_summary = None
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as scratch:
        data, staging = args.data, args.staging
        if data is None:
            data = args.out or Path(scratch) / "data"
            staging = Path(scratch) / "staging"
            started = time.perf_counter()
            minhash = MinHashConfig(shingle_language=args.dedup_shingle_language)
            step_summary = run_stage(args.corpus, data, staging, DataConfig(minhash=minhash))
            seconds = time.perf_counter() - started
        keys = staged_text_keys(staging) if staging is not None else None
        results = score(data, labels, responses_per_url, keys)
    print_table(results, seconds)
    if step_summary is not None:
        print_steps(step_summary)
    decoding = check_decoding(args.corpus, labels)
    print_decoding(decoding)
    met = all(results[key] >= target for key, target in TARGETS.items())
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
