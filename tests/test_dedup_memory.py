"""Dedup holds fixed-width state per document (issue #4), and its sorting-based internals give
exactly what the rule in `lmforge.tasks.data.dedup`'s docstring says, checked against a plain
dict-and-set reference on random inputs."""

from __future__ import annotations

import random
import tracemalloc
from itertools import combinations

import numpy as np
import pytest
from lmforge.tasks.data import dedup
from lmforge.tasks.data.dedup import (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    DedupDocument,
    DuplicateReport,
    MinHashConfig,
    MinHasher,
    find_duplicates,
    jaccard,
    normalised_text_key,
    shingle_family,
    shingle_hashes,
    shingles,
)

WORDS = [f"w{n}" for n in range(40)]
KANA = list("あいうえおかきくけこさしすせそたちつてと")


class KeptEarlier:
    """`PriorDocuments` over an earlier report's kept documents, texts held in memory."""

    def __init__(self, report: DuplicateReport, documents: list[DedupDocument], config):
        kept = report.kept
        self.keys, self.bands, self.has_bands = kept.keys, kept.bands, kept.has_bands
        self._ids = kept.ids
        self._documents = {d.id: d for d in documents}
        self._config = config

    def ids(self, rows):
        return [self._ids[row] for row in rows]

    def shingle_sets(self, rows):
        documents = {row: self._documents[self._ids[row]] for row in rows}
        return {row: shingles(d.text, d.lang, self._config) for row, d in documents.items()}


def reference_report(documents: list[DedupDocument], config: MinHashConfig, prior) -> tuple:
    """The module docstring's rule with dicts and sets: every exact pair, every band bucket's
    windowed pairs, exact Jaccard for each, union-find file by file. Returns the duplicates,
    the stats and the kept rows (ids, keys, bands, has_bands) as plain values."""
    hasher, offset = MinHasher(config), len(prior.keys)
    rank, key_of, bands = {}, {}, {}
    prior_row_of_key: dict[bytes, int] = {}
    for row in range(offset):
        prior_row_of_key.setdefault(prior.keys[row].tobytes(), row)
        if prior.has_bands[row]:
            bands[row] = prior.bands[row]
    sources: dict[str, int] = {}
    firsts_with_key: dict[bytes, list[int]] = {}
    exact_pairs = set()
    for node, document in enumerate(documents, start=offset):
        rank[node] = sources.setdefault(document.source, len(sources))
        key = key_of[node] = normalised_text_key(document.text, shingle_family(document.lang,
                                                                               config))  # fmt: skip
        if key in prior_row_of_key:
            exact_pairs.add((prior_row_of_key[key], node))
        firsts = firsts_with_key.setdefault(key, [])
        exact_pairs.update((first, node) for first in firsts)
        if firsts and rank[firsts[-1]] == rank[node]:
            continue
        firsts.append(node)
        hashes = shingle_hashes(document.text, document.lang, config)
        if len(hashes):
            bands[node] = hasher.bands(hasher.signature(hashes))
    candidates = set()
    for band in range(config.bands):
        buckets: dict[int, list[int]] = {}
        for node in sorted(bands):
            buckets.setdefault(int(bands[node][band]), []).append(node)
        for members in buckets.values():
            for i, j in combinations(range(len(members)), 2):
                if j - i <= dedup.BUCKET_WINDOW and members[j] >= offset:
                    candidates.add((members[i], members[j]))
    sets = prior.shingle_sets(list(range(offset)))
    sets.update({node: shingles(d.text, d.lang, config)
                 for node, d in enumerate(documents, start=offset)})  # fmt: skip
    verified = {(a, b) for a, b in candidates if jaccard(sets[a], sets[b]) >= config.threshold}
    survivor_of: dict[int, int] = {}
    for file_rank in sorted(set(rank.values())):
        parent: dict[int, int] = {}

        def root(node: int) -> int:
            while parent.get(node, node) != node:
                node = parent[node]
            return node

        for a, b in exact_pairs | verified:
            same_file = a >= offset and rank[a] == file_rank
            if rank[b] == file_rank and (same_file or a not in survivor_of):
                low, high = sorted((root(a), root(b)))
                if low != high:
                    parent[high] = low
        for node in parent:
            if node >= offset and rank[node] == file_rank:
                survivor_of[node] = root(node)
    ids = {node: d.id for node, d in enumerate(documents, start=offset)}
    ids.update(zip(range(offset), prior.ids(list(range(offset)))))
    keys = {**key_of, **{row: prior.keys[row].tobytes() for row in range(offset)}}
    duplicates = sorted(
        (ids[node], ids[survivor],
         EXACT_DUPLICATE if keys[node] == keys[survivor] else NEAR_DUPLICATE)
        for node, survivor in survivor_of.items()
    )  # fmt: skip
    sizes: dict[int, int] = {}
    for survivor in survivor_of.values():
        sizes[survivor] = sizes.get(survivor, 1) + 1
    stats = {
        "documents": len(documents),
        "prior_documents": offset,
        "exact_duplicates": sum(d[2] == EXACT_DUPLICATE for d in duplicates),
        "near_duplicates": sum(d[2] == NEAR_DUPLICATE for d in duplicates),
        "candidate_pairs": len(candidates),
        "verified_pairs": len(verified),
        "clusters": len(sizes),
        "largest_cluster": max(sizes.values(), default=0),
    }
    kept = [node for node in sorted(ids) if node >= offset and node not in survivor_of]
    no_bands = np.zeros(config.bands, np.uint64)
    kept_rows = (
        [ids[node] for node in kept],
        [list(np.frombuffer(keys[node], "<u8")) for node in kept],
        [list(bands.get(node, no_bands)) for node in kept],
        [node in bands for node in kept],
    )
    return duplicates, stats, kept_rows


def plain(report: DuplicateReport) -> tuple:
    kept = report.kept
    return (
        [(d.id, d.duplicate_of, d.reason) for d in report.duplicates],
        report.stats,
        (kept.ids, kept.keys.tolist(), kept.bands.tolist(), kept.has_bands.tolist()),
    )


def random_documents(rng: random.Random, count: int, prefix: str) -> list[DedupDocument]:
    """Texts with exact copies (some in other case), near copies (a few units changed),
    empty and very short texts, Japanese among them, from 1-3 files, often interleaved."""
    files = [f"{prefix}file{n}" for n in range(rng.randint(1, 3))]
    interleaved = rng.random() < 0.5
    originals: list[tuple[str, str | None]] = []
    documents = []
    for n in range(count):
        choice = rng.random()
        if originals and choice < 0.3:
            text, lang = rng.choice(originals)
            text = text.upper() if rng.random() < 0.3 else text
        elif originals and choice < 0.6:
            text, lang = rng.choice(originals)
            units = list(text) if lang == "ja" else text.split()
            for _ in range(rng.randint(1, 3)):
                units[rng.randrange(len(units))] = rng.choice(KANA if lang == "ja" else WORDS)
            text = "".join(units) if lang == "ja" else " ".join(units)
        else:
            lang = rng.choice([None, "en", "ja"])
            length = rng.choice([0, 3, 60, 90])
            units = [rng.choice(KANA if lang == "ja" else WORDS) for _ in range(length)]
            text = "".join(units) if lang == "ja" else " ".join(units)
            if length:
                originals.append((text, lang))
        source = rng.choice(files) if interleaved else files[n * len(files) // count]
        documents.append(DedupDocument(f"{prefix}{n}", text, lang, source))
    return documents


CONFIGS = [
    MinHashConfig(),
    MinHashConfig(num_perm=112, bands=56, rows=2),  # many candidates, many rejected
    MinHashConfig(ngram=2, num_perm=16, bands=8, rows=2, threshold=0.5),
]


@pytest.mark.parametrize("seed", range(24))
def test_sorting_internals_give_what_the_plain_reference_gives(seed, monkeypatch):
    rng = random.Random(seed)
    config = CONFIGS[seed % len(CONFIGS)]
    # Tiny blocks and windows: block edges and windowed buckets are exercised too.
    monkeypatch.setattr(dedup, "ROWS_PER_BLOCK", rng.choice([1, 3, 16384]))
    monkeypatch.setattr(dedup, "BUCKET_WINDOW", rng.choice([1, 2, 256]))
    # Open shingle sets in memory, in the temporary file, or some of each.
    monkeypatch.setattr(dedup, "SHINGLE_MEMORY_BYTES", rng.choice([0, 4096, 2**30]))
    monkeypatch.setattr(dedup, "PRIOR_SETS_PER_READ", rng.choice([2, 4096]))
    earlier = random_documents(rng, rng.randint(0, 30), "old-")
    documents = random_documents(rng, rng.randint(0, 50), "new-")
    for n in range(0, len(documents), 4):  # some texts seen in the earlier run
        if earlier:
            copy = rng.choice(earlier)
            documents[n] = DedupDocument(documents[n].id, copy.text, copy.lang,
                                         documents[n].source)  # fmt: skip
    prior = KeptEarlier(find_duplicates(earlier, config), earlier, config)

    assert plain(find_duplicates(documents, config, prior)) == reference_report(
        documents, config, prior
    )


def test_the_random_inputs_hold_every_kind_of_duplicate():
    rng = random.Random(0)
    totals = {"exact_duplicates": 0, "near_duplicates": 0, "candidate_pairs": 0,
              "verified_pairs": 0}  # fmt: skip
    for _ in range(8):
        stats = find_duplicates(random_documents(rng, 50, "d"), CONFIGS[0]).stats
        totals = {name: count + stats[name] for name, count in totals.items()}
    assert totals["exact_duplicates"] > 20 and totals["near_duplicates"] > 20
    assert totals["candidate_pairs"] > totals["verified_pairs"] > 20


def test_the_first_id_to_repeat_is_named_after_the_first_pass():
    documents = [DedupDocument(doc_id, f"text {n}") for n, doc_id in
                 enumerate(["a", "b", "ü-1", "c", "ü-1", "b", "a"])]  # fmt: skip
    with pytest.raises(ValueError, match="'ü-1' occurs twice"):
        find_duplicates(documents)


def test_a_copy_in_the_same_file_joins_the_first_without_being_minhashed(monkeypatch):
    signed = []
    signature = MinHasher.signature
    monkeypatch.setattr(MinHasher, "signature", lambda self, hashes: signed.append(len(hashes))
                        or signature(self, hashes))  # fmt: skip
    text = " ".join(WORDS)
    documents = [DedupDocument("first", text, source="a"),
                 DedupDocument("copy", text.upper(), source="a"),
                 DedupDocument("next-file", text, source="b")]  # fmt: skip
    report = find_duplicates(documents)
    assert [(d.id, d.duplicate_of, d.reason) for d in report.duplicates] == [
        ("copy", "first", EXACT_DUPLICATE), ("next-file", "first", EXACT_DUPLICATE),
    ]  # fmt: skip
    assert len(signed) == 2  # the copy in file "a" is not MinHashed; file "b"'s first is


def test_an_exact_copy_of_a_document_removed_in_an_earlier_file_meets_its_survivor():
    base = [f"w{n}" for n in range(100)]
    near = base[:50] + ["changed"] + base[51:]
    documents = [DedupDocument("kept", " ".join(base), source="a"),
                 DedupDocument("removed", " ".join(near), source="a"),
                 DedupDocument("copy-of-removed", " ".join(near), source="b")]  # fmt: skip
    report = find_duplicates(documents)
    assert [(d.id, d.duplicate_of, d.reason) for d in report.duplicates] == [
        ("copy-of-removed", "kept", NEAR_DUPLICATE), ("removed", "kept", NEAR_DUPLICATE),
    ]  # fmt: skip


def test_the_key_table_finds_every_key_after_growing():
    keys = bytearray()
    table = dedup._LatestFirstWithKey(keys, slots=4)
    # Keys sharing their first 8 bytes collide in every table size.
    samples = [bytes(8) + n.to_bytes(8, "little") for n in range(40)]
    samples += [normalised_text_key(f"text {n}") for n in range(200)]
    for row, key in enumerate(samples):
        assert table.get(key) == -1
        keys += key
        table.set(key, row)
    assert [table.get(key) for key in samples] == list(range(len(samples)))
    assert len(table.slots) >= 1.5 * len(samples)


def test_open_shingle_sets_beyond_the_memory_budget_wait_in_a_file():
    sets = {node: np.unique(np.arange(node * 10, dtype=np.uint64) * 7919) for node in range(1, 9)}
    with dedup._OpenShingleSets(memory_bytes=300) as open_sets:
        for node, shingle_set in sets.items():
            open_sets.put(node, shingle_set)
        assert 0 < len(open_sets.in_memory) < len(sets) and open_sets.held <= 300
        open_sets.drop(1)
        open_sets.drop(8)
        for node in range(2, 8):
            assert np.array_equal(open_sets.get(node), sets[node])
        with pytest.raises(KeyError):
            open_sets.get(8)
    assert open_sets.file.closed


def peak_bytes_per_document(count: int) -> float:
    rng = random.Random(count)
    texts = [" ".join(f"v{rng.randrange(5000)}" for _ in range(30)) for _ in range(count)]
    documents = [DedupDocument(f"doc-{n:07d}", text, "en", "f") for n, text in enumerate(texts)]
    tracemalloc.start()
    try:
        find_duplicates(documents)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_per_document_is_about_what_the_index_holds(monkeypatch):
    monkeypatch.setattr(dedup, "ROWS_PER_BLOCK", 64)  # allocation steps far below the slope
    peak_bytes_per_document(100)  # one-time tables and caches out of the way
    small, large = peak_bytes_per_document(500), peak_bytes_per_document(2000)
    per_document = (large - small) / 1500
    # ~290 bytes: a run's rows (ids, key, band hashes, flags, file rank: ~150 bytes) while the
    # kept rows and ids are gathered for the report; a list of ids, tuples of pairs and a dict
    # of keys held ~520 here.
    assert per_document < 400, f"{per_document:.0f} bytes per document"
