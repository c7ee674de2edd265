"""Dedup on Dask gives exactly what one process gives (issue #18): the same removals,
`duplicate_of`, reasons, statistics and kept index rows, for any number of workers and
partitions, in an incremental refresh, and after a worker dies mid-dedup; the version the
workers write from it holds the single-process files, name for name and row for row."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import signal
import sys
from pathlib import Path

import cloudpickle
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster, WorkerPlugin
from lmforge import manifest as manifest_module
from lmforge.manifest import verify_outputs
from lmforge.tasks.data import dedup
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.dataset_versions import read_documents
from lmforge.tasks.data.dedup import DedupDocument, MinHashConfig, find_duplicates
from lmforge.tasks.data.dedup_dask import (
    DaskDedup,
    DistributedDedupSettings,
    DistributedDuplicates,
    DocumentFile,
    PriorIndex,
    find_duplicates_distributed,
    prefers_distributed_dedup,
)
from lmforge.tasks.data.dedup_dask import verify, write
from lmforge.tasks.data.dedup_dask.plan import DedupPlan
from lmforge.tasks.data.dedup_dask.run import Stages
from lmforge.tasks.data.dedup_dask.write import PartSeries
from lmforge.tasks.data.dedup_index import DedupIndex, index_files, index_table
from lmforge.tasks.data.refresh import DatasetRefresh
from lmforge.tasks.data.warc_processing import REMOVED_SCHEMA, FileResult, process_warc_file
from conftest import SHARED
from test_dedup_memory import CONFIGS, plain, random_documents

CANDIDATE_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("lang", pa.string()),
                              ("declared_lang", pa.string())])  # fmt: skip


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        yield client


def stage_files(documents: list[DedupDocument], folder: Path) -> list[DocumentFile]:
    """The documents as candidates files, one per run of documents from one source (the
    refresh stages one file per WARC file)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for source, group in itertools.groupby(documents, key=lambda d: d.source):
        group = list(group)
        path = folder / f"{len(files):04d}.parquet"
        pq.write_table(pa.table({"id": [d.id for d in group], "text": [d.text for d in group],
                                 "lang": [d.lang for d in group],
                                 "declared_lang": [None] * len(group)},
                                schema=CANDIDATE_SCHEMA), path)  # fmt: skip
        files.append(DocumentFile(str(path), source, len(group)))
    return files


def grouped_by_file(documents: list[DedupDocument]) -> list[DedupDocument]:
    """Documents of one source together, sources in order of first appearance: the order the
    refresh gives (a file at a time)."""
    order = {source: rank for rank, source in enumerate(dict.fromkeys(d.source for d in documents))}
    return sorted(documents, key=lambda d: order[d.source])


def in_small_files(rng: random.Random, documents: list[DedupDocument]) -> list[DedupDocument]:
    """The documents in input order, cut into files of 3 to 9 (chains and copies cross files)."""
    size = rng.randint(3, 9)
    return [DedupDocument(d.id, d.text, d.lang, f"f{n // size:03d}")
            for n, d in enumerate(documents)]  # fmt: skip


def distributed(client, documents, folder, config=MinHashConfig(), prior=None, **settings):
    files = stage_files(documents, folder / "files")
    return find_duplicates_distributed(files, config, client, folder / "spill", prior,
                                       settings=DistributedDedupSettings(**settings))  # fmt: skip


def window(start: int, words: int = 100) -> str:
    return " ".join(f"token{i}" for i in range(start, start + words))


def test_a_chain_across_partitions_and_files_ends_as_in_one_process(client, tmp_path):
    # Each text 6 words on from the one before (Jaccard 0.88); the ends are not copies.
    texts = [window(6 * n) for n in range(6)]
    documents = [DedupDocument(f"d{n}", text, source=f"f{n // 2}") for n, text in
                 enumerate(texts)]  # fmt: skip
    expected = find_duplicates(documents)
    result = distributed(client, documents, tmp_path, partitions=4, band_ranges=3,
                         chunk_documents=1)  # fmt: skip
    assert plain(result) == plain(expected)
    # file f0 keeps d0; d2 (f1) meets only kept documents: the chain through d1 is not followed
    assert {d.id: d.duplicate_of for d in result.duplicates} == {
        "d1": "d0", "d3": "d2", "d5": "d4"}  # fmt: skip


def test_exact_copies_in_different_partitions_lose_to_the_first_seen(client, tmp_path):
    text = window(0)
    documents = [DedupDocument("a", window(500), source="f0"),
                 DedupDocument("first", text, source="f0"),
                 DedupDocument("same-file-copy", text.upper(), source="f0"),
                 DedupDocument("later-copy", text, source="f1"),
                 DedupDocument("empty", "", source="f2"),
                 DedupDocument("empty-copy", "  ", source="f3")]  # fmt: skip
    result = distributed(client, documents, tmp_path, partitions=3, chunk_documents=1)
    assert plain(result) == plain(find_duplicates(documents))
    assert {(d.id, d.duplicate_of, d.reason) for d in result.duplicates} == {
        ("same-file-copy", "first", "exact_duplicate"),
        ("later-copy", "first", "exact_duplicate"),
        ("empty-copy", "empty", "exact_duplicate"),
    }  # fmt: skip


@pytest.mark.parametrize("seed", range(8))
def test_random_inputs_give_the_single_process_report(client, tmp_path, seed, monkeypatch):
    rng = random.Random(seed)
    config = CONFIGS[seed % len(CONFIGS)]
    monkeypatch.setattr(dedup, "BUCKET_WINDOW", rng.choice([1, 2, 256]))
    documents = in_small_files(rng, random_documents(rng, rng.randint(30, 90), "d"))
    expected = find_duplicates(documents, config)
    result = distributed(client, documents, tmp_path, config, partitions=rng.choice([1, 2, 5]),
                         band_ranges=rng.choice([1, 3]), chunk_documents=rng.choice([1, 7, 100]))  # fmt: skip
    assert plain(result) == plain(expected)


class OpenFiles:
    """`open` for a module, counting the files it has open at once."""

    def __init__(self):
        self.now = self.most = 0

    def __call__(self, *args, **kwargs):
        file = open(*args, **kwargs)
        self.now += 1
        self.most = max(self.most, self.now)
        close = file.close

        def counted_close():
            self.now -= 1
            close()

        file.close = counted_close
        return file


def test_verification_keeps_a_few_set_files_open_however_many_homes(client, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    # A pair partition's pairs reach every home; holding each home's file and whole index grew
    # a verify task with the dataset.
    rng = random.Random(7)
    documents = in_small_files(rng, random_documents(rng, 80, "d"))
    opened = OpenFiles()
    monkeypatch.setattr(verify, "OPEN_SET_FILES", 2)
    monkeypatch.setattr(verify, "open", opened, raising=False)
    result = distributed(client, documents, tmp_path, partitions=1, chunk_documents=1)
    assert plain(result) == plain(find_duplicates(documents))
    assert len({d.source for d in documents}) > 8  # homes: one per file
    # The one verify task (one partition) reads at most 2; spilling writes one per worker.
    assert 1 <= opened.most <= 3


def write_prior(report, documents, config, folder: Path) -> tuple[DedupIndex, PriorIndex]:
    """An earlier run's kept documents as a dataset folder: one docs part, one index file."""
    by_id = {d.id: d for d in documents}
    kept = [by_id[doc_id] for doc_id in report.kept.ids]
    part = "docs/part-0.parquet"
    (folder / "docs").mkdir(parents=True)
    pq.write_table(pa.table({"text": [d.text for d in kept]}), folder / part, row_group_size=7)
    n = len(kept)
    table = index_table(report.kept, range(n), [d.lang for d in kept], [part] * n, range(n),
                        config)  # fmt: skip
    index_path = folder / "index.parquet"
    pq.write_table(table, index_path, row_group_size=5)
    return DedupIndex(folder, table, config), PriorIndex.of_files(folder, [index_path])


@pytest.mark.parametrize("seed", range(4))
def test_an_incremental_run_against_a_partitioned_index_matches_one_process(
        client, tmp_path, seed):  # fmt: skip
    rng = random.Random(100 + seed)
    config = CONFIGS[seed % len(CONFIGS)]
    earlier = grouped_by_file(random_documents(rng, rng.randint(10, 30), "old-"))
    documents = in_small_files(rng, random_documents(rng, rng.randint(20, 50), "new-"))
    for n in range(0, len(documents), 3):  # copies of earlier texts, kept or removed then
        copy = rng.choice(earlier)
        documents[n] = DedupDocument(documents[n].id, copy.text, copy.lang, documents[n].source)
    in_memory, on_disk = write_prior(find_duplicates(earlier, config), earlier, config,
                                     tmp_path / "dataset")  # fmt: skip
    expected = find_duplicates(documents, config, in_memory)
    result = distributed(client, documents, tmp_path, config, prior=on_disk,
                         partitions=rng.choice([1, 3]), chunk_documents=rng.choice([5, 100]))  # fmt: skip
    assert plain(result) == plain(expected)
    assert expected.stats["prior_documents"] > 0


def test_a_chain_through_a_document_removed_in_an_earlier_run_is_not_followed(client, tmp_path):
    old = [DedupDocument("kept", window(0), source="v1"),
           DedupDocument("removed", window(6), source="v1")]  # fmt: skip
    config = MinHashConfig()
    first = find_duplicates(old, config)
    assert [d.id for d in first.duplicates] == ["removed"]
    in_memory, on_disk = write_prior(first, old, config, tmp_path / "dataset")
    new = [DedupDocument("new", window(12), source="v2")]  # ~ "removed", not ~ "kept"
    result = distributed(client, new, tmp_path, config, prior=on_disk)
    assert plain(result) == plain(find_duplicates(new, config, in_memory))
    assert result.duplicates == []


def test_without_removal_every_document_is_kept_with_its_index_rows(client, tmp_path):
    documents = [DedupDocument(str(n), window(0), source=f"f{n}") for n in range(3)]
    files = stage_files(documents, tmp_path / "files")
    result = find_duplicates_distributed(files, MinHashConfig(), client, tmp_path / "spill",
                                         remove=False)  # fmt: skip
    assert plain(result) == plain(find_duplicates(documents, remove=False))


def test_the_spill_folder_is_removed_afterwards(client, tmp_path):
    distributed(client, [DedupDocument("a", window(0))], tmp_path)
    assert list((tmp_path / "spill").iterdir()) == []


class CountedPlan:
    """A plan that notes every time it is unpickled (a line in `log`)."""

    def __init__(self, log: str):
        self.log = log

    def __reduce__(self):
        return (_unpickled_plan, (self.log,))


def _unpickled_plan(log: str) -> CountedPlan:
    with open(log, "a") as file:
        file.write("unpickled\n")
    return CountedPlan(log)


def plan_seen(plan: CountedPlan, item: int, root: str) -> int:
    return item


def test_a_stage_sends_its_plan_once_not_with_every_task(tmp_path):
    # The plan lists every input file: unpickled per task, it cost each worker of a 2 M
    # document run ~235 MiB that grew with the dataset.
    log = tmp_path / "unpickled"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        stages = Stages(client, CountedPlan(str(log)), tmp_path / "run-1", retries=0)
        assert stages("seen", plan_seen, range(40)) == list(range(40))
        assert stages("seen-again", plan_seen, range(40)) == list(range(40))
    unpickled = len(log.read_text().splitlines())
    assert 1 <= unpickled <= 4  # once per worker, and once on the way to the scheduler


def test_the_distributed_path_is_chosen_on_dask_when_asked_or_large():
    assert not prefers_distributed_dedup("local", True, 10**9, 1000)
    assert not prefers_distributed_dedup("dask", False, 999, 1000)
    assert prefers_distributed_dedup("dask", False, 1000, 1000)
    assert prefers_distributed_dedup("dask", True, 1, 1000)


def test_files_are_chunked_so_that_every_worker_gets_chunks_to_sign():
    files = [DocumentFile(f"f{n}.parquet", f"f{n}", 100) for n in range(8)]
    settings = DistributedDedupSettings()  # chunks of up to 50,000 documents

    def chunk_sizes(workers: int) -> list[int]:
        plan = DedupPlan.make(files, MinHashConfig(), None, settings, workers)
        return [sum(f.documents for f in plan.chunk_files(c)) for c in range(len(plan.chunks))]

    assert chunk_sizes(1) == [400, 400]
    assert chunk_sizes(2) == [200] * 4
    assert chunk_sizes(8) == [100] * 8  # whole files: never fewer documents than a file holds
    small = DistributedDedupSettings(chunk_documents=200)
    plan = DedupPlan.make(files, MinHashConfig(), None, small, 1)
    assert len(plan.chunks) == 4  # the setting still bounds a chunk


# ---------------------------------------------------------------- the refresh on Dask


@pytest.fixture(scope="module")
def processed_crawl(tmp_path_factory):
    """The two WARC files of `test_data_refresh`'s crawl, processed once."""
    from test_data_refresh import write_crawl

    folder = tmp_path_factory.mktemp("crawl")
    write_crawl(folder)
    paths = sorted(folder.glob("*.warc.gz"))
    staging = tmp_path_factory.mktemp("staging")
    return paths, [process_warc_file(path, DataConfig(), staging) for path in paths]


def refresh_version(out: Path, results, paths, dask=None, config=DataConfig()) -> dict:
    refresh = DatasetRefresh(out, config)
    return refresh.write(results, refresh.find_duplicates(results, dask), inputs=paths)


def dataset_contents(out: Path) -> tuple:
    """Documents, removals (with duplicate_of) and index rows, by id: what a version holds."""
    docs = sorted(read_documents(out).to_pylist(), key=lambda row: row["id"])
    removed = sorted((row for path in sorted((out / "removed").glob("*.parquet"))
                      for row in pq.read_table(path).to_pylist()), key=lambda row: row["id"])  # fmt: skip
    index = pa.concat_tables([pq.read_table(p) for p in index_files(out)])
    return docs, removed, index.drop_columns(["part", "row"]).to_pylist()


def dask_dedup(client, folder: Path, **settings) -> DaskDedup:
    return DaskDedup(str(folder), client.scheduler.address,
                     settings=DistributedDedupSettings(**settings))  # fmt: skip


def test_a_refresh_deduplicated_on_dask_writes_the_single_process_dataset(
        client, processed_crawl, tmp_path):  # fmt: skip
    paths, results = processed_crawl
    one = refresh_version(tmp_path / "one", results, paths)
    dask = refresh_version(tmp_path / "dask", results, paths,
                           dask_dedup(client, tmp_path / "spill", partitions=3, chunk_documents=1))  # fmt: skip
    assert one["counts"] == dask["counts"] and one["counts"]["removed_by_stage"]["dedup"] > 0
    assert dataset_contents(tmp_path / "one") == dataset_contents(tmp_path / "dask")


def test_an_incremental_refresh_on_dask_equals_the_single_process_one(
        client, processed_crawl, tmp_path):  # fmt: skip
    paths, results = processed_crawl
    for name, dask in (("one", None), ("dask", dask_dedup(client, tmp_path / "spill",
                                                            partitions=2))):  # fmt: skip
        refresh_version(tmp_path / name, results[:1], paths[:1], dask)
        manifest = refresh_version(tmp_path / name, results, paths, dask)
        assert manifest["version"] == 2
    assert dataset_contents(tmp_path / "one") == dataset_contents(tmp_path / "dask")


WEBDOCS = SHARED / "corpus" / "webdocs"


def two_versions(out: Path, results, paths, dask=None) -> tuple[dict, dict]:
    """An incremental refresh: version 1 from the first half of the files, version 2 from all."""
    half = len(paths) // 2
    return (refresh_version(out, results[:half], paths[:half], dask),
            refresh_version(out, results, paths, dask))  # fmt: skip


@pytest.fixture(scope="module")
def processed_webdocs(tmp_path_factory):
    """Half of the webdocs corpus's WARC files (~30 s to process on two cores), processed
    once, and their dataset deduplicated by one process in two versions."""
    paths = sorted(WEBDOCS.glob("*.warc.gz"))[:4]
    if not paths:
        pytest.skip(f"{WEBDOCS} is not present")
    staging = tmp_path_factory.mktemp("webdocs-staging")
    results = [process_warc_file(path, DataConfig(), staging) for path in paths]
    one = tmp_path_factory.mktemp("webdocs-one")
    first, second = two_versions(one, results, paths)
    # Mirrors, copies and near copies within the first version and against it.
    assert first["counts"]["removed_by_stage"]["dedup"] > 50
    assert second["version"] == 2 and second["counts"]["removed_by_stage"]["dedup"] > 50
    return paths, results, dataset_contents(one)


@pytest.mark.corpus
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_on_webdocs_any_worker_count_keeps_and_removes_what_one_process_does(
        processed_webdocs, workers, tmp_path):  # fmt: skip
    """The real corpus, both versions of an incremental refresh, a 1 MiB partition budget and a
    chunk per file: kept documents, removals with `duplicate_of` and index rows equal the
    single process's."""
    paths, results, expected = processed_webdocs
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        dask = dask_dedup(client, tmp_path / "spill", worker_memory_bytes=2**20,
                          chunk_documents=1000)  # fmt: skip
        two_versions(tmp_path / "dask", results, paths, dask)
    assert dataset_contents(tmp_path / "dask") == expected


# Two documents a part: parts shared by both chunks of the crawl (a chunk a file) are merged.
SMALL_PARTS = DataConfig(docs_per_part=2)


def written_files(out: Path) -> list[tuple[str, list[dict]]]:
    """Every file the manifest lists but the manifest copies, with its rows, in manifest order:
    the same names and the same rows in each."""
    manifest = json.loads((out / "manifest.json").read_text())
    return [(entry["path"], pq.read_table(out / entry["path"]).to_pylist())
            for entry in manifest["outputs"] if entry["path"].endswith(".parquet")]  # fmt: skip


def record_merges(monkeypatch) -> list:
    """Records the parts each distributed write joins from pieces (planned in this process)."""
    merges = []
    laid_out = write.WritePlan.laid_out

    def recording(plan, counts):
        plan = laid_out(plan, counts)
        merges.extend(plan.merges)
        return plan

    monkeypatch.setattr(write.WritePlan, "laid_out", recording)
    return merges


def record_files_hashed_by_the_manifest(monkeypatch) -> list[Path]:
    """Records the files `lmforge.manifest` hashes itself (in this process)."""
    hashed = []
    original = manifest_module.sha256_file

    def recording(path, *args, **kwargs):
        hashed.append(Path(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(manifest_module, "sha256_file", recording)
    return hashed


def one_file_per_document(result: FileResult, folder: Path) -> list[FileResult]:
    """The result's candidates as files of one document each (the first with the file's
    removals and responses): chunks of one document, so two-document parts straddle them."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(result.candidates_path)
    no_removals = folder / "no-removals.parquet"
    pq.write_table(REMOVED_SCHEMA.empty_table(), no_removals)
    results = []
    for n in range(table.num_rows):
        candidates = folder / f"candidates-{n:02d}.parquet"
        pq.write_table(table.slice(n, 1), candidates)
        first = n == 0
        stats = {**result.stats, "candidates": 1,
                 "responses": result.stats["responses"] - table.num_rows + 1 if first else 1,
                 "read_errors": result.stats["read_errors"] if first else []}  # fmt: skip
        results.append(dataclasses.replace(
            result, warc_file=f"{result.warc_file}-{n:02d}", sha256=f"{n:064x}",
            candidates_path=str(candidates),
            removed_path=result.removed_path if first else str(no_removals), stats=stats))  # fmt: skip
    return results


def test_workers_write_the_single_process_files_for_a_new_dataset_and_its_version_2(
        client, processed_crawl, tmp_path, monkeypatch):  # fmt: skip
    _, crawl = processed_crawl
    results = one_file_per_document(crawl[0], tmp_path / "split") + crawl[1:]
    merged = record_merges(monkeypatch)
    hashed_here = record_files_hashed_by_the_manifest(monkeypatch)
    spill = tmp_path / "spill"
    dask = dask_dedup(client, spill, partitions=2, chunk_documents=1)
    for version, files in ((1, 4), (2, len(results))):  # a new dataset, then a version 2
        one = DatasetRefresh(tmp_path / "one", SMALL_PARTS)
        one = one.write(results[:files], one.find_duplicates(results[:files]))
        refresh = DatasetRefresh(tmp_path / "dask", SMALL_PARTS)
        duplicates = refresh.find_duplicates(results[:files], dask)
        assert isinstance(duplicates, DistributedDuplicates)  # left on disk, not read back
        on_dask = refresh.write(results[:files], duplicates)
        assert on_dask["version"] == one["version"] == version
        assert on_dask["counts"] == one["counts"]
        assert on_dask["version_counts"] == one["version_counts"]
        assert written_files(tmp_path / "dask") == written_files(tmp_path / "one")
        assert dataset_contents(tmp_path / "dask") == dataset_contents(tmp_path / "one")
        assert [p.name for p in spill.iterdir() if p.name.startswith("dedup-")] == []
        # The workers hashed what they wrote; the flow's process read none of it back ...
        in_dask_dataset = [p for p in hashed_here if any(
            part == "dask" or part.startswith(".dask.tmp-") for part in p.parts)]  # fmt: skip
        assert in_dask_dataset  # the ledger (and the parent's manifest): written by the flow
        assert not [p for p in in_dask_dataset if {"docs", "removed", "index"} & set(p.parts)]
        verify_outputs(tmp_path / "dask")  # ... and their digests are the files'
        hashed_here.clear()
    assert one["counts"]["removed_by_stage"]["dedup"] > 0
    # docs and removed parts joined from the pieces of several chunks
    assert {folder for folder, _, _ in merged} >= {"docs/lang=en", "removed"}
    assert not list((tmp_path / "dask").rglob(".writing-*"))


def test_the_top_fraction_selection_keeps_writing_in_the_flow(
        client, processed_crawl, tmp_path, monkeypatch):  # fmt: skip
    # keep_top_fraction ranks each language over the whole version: not done on the workers.
    from lmforge.tasks.data import refresh as refresh_module

    paths, results = processed_crawl
    monkeypatch.setattr(refresh_module, "has_top_fraction_selection", lambda config: True)
    refresh = DatasetRefresh(tmp_path / "dask", DataConfig())
    duplicates = refresh.find_duplicates(results, dask_dedup(client, tmp_path / "spill"))
    assert isinstance(duplicates, dedup.DuplicateReport)


def test_parts_shared_by_chunks_are_the_ones_their_rows_straddle():
    series = PartSeries.of_counts("removed", [3, 0, 2, 5])
    assert series.starts == (0, 3, 3, 5)
    # rows 0-2 | 3-4 | 5-9 in parts of 2: part 1 = rows 2, 3 (chunks 0, 2); part 2 = 4, 5
    assert series.shared_parts(2) == {1: (0, 2), 2: (2, 3)}
    assert series.shared_parts(10) == {0: (0, 2, 3)}


class KillWorkerOnce(WorkerPlugin):
    """A worker plugin that kills its worker's process (SIGKILL) as the first task of a stage
    starts executing, once across restarts (a marker file remembers)."""

    name = "kill-worker-once"

    def __init__(self, stage: str, marker: str):
        self.stage, self.marker = stage, marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith(f"{self.stage}-"):
            try:
                with open(self.marker, "x"):
                    pass
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("stage, split", [("survivors", False), ("write-chunk", True)])
def test_a_worker_killed_mid_dedup_or_mid_write_is_retried_without_losing_or_repeating_documents(
        processed_crawl, tmp_path, stage, split):  # fmt: skip
    paths, results = processed_crawl
    if split:  # chunks of two one-document files, parts of two: parts shared, then merged
        results = one_file_per_document(results[0], tmp_path / "split") + results[1:]
        paths = None  # the inputs as the results describe them
    config = SMALL_PARTS
    expected = refresh_version(tmp_path / "one", results, paths, config=config)
    marker = tmp_path / "killed"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        # Sent by value: the worker processes cannot import this test module.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        client.register_plugin(KillWorkerOnce(stage, str(marker)))
        manifest = refresh_version(tmp_path / "dask", results, paths,
                                   dask_dedup(client, tmp_path / "spill", partitions=2,
                                              chunk_documents=2), config)  # fmt: skip
    assert marker.exists()  # a worker did die in that stage
    counts = manifest["counts"]
    assert counts["kept"] + counts["removed"] == counts["responses"]
    assert counts == expected["counts"]
    assert written_files(tmp_path / "one") == written_files(tmp_path / "dask")
    assert dataset_contents(tmp_path / "one") == dataset_contents(tmp_path / "dask")


def test_the_refresh_flow_asks_for_dask_dedup_only_on_the_dask_runner(processed_crawl, tmp_path):
    from lmforge.flows.data_refresh import dedup_on_dask
    from lmforge.flows.params import DataRefreshRun

    _, results = processed_crawl
    assert dedup_on_dask(DataRefreshRun(runner="dask"), results, tmp_path) is None  # small input
    forced = dedup_on_dask(DataRefreshRun(runner="dask", distributed_dedup=True,
                                          dedup_worker_memory_mib=512), results, tmp_path)  # fmt: skip
    assert forced.settings.worker_memory_bytes == 512 * 2**20
    assert forced.spill_dir == str(tmp_path / "dedup")
    large = DataRefreshRun(runner="dask", distributed_dedup_above=1)
    assert dedup_on_dask(large, results, tmp_path) is not None
    assert dedup_on_dask(DataRefreshRun(distributed_dedup_above=1), results, tmp_path) is None
    with pytest.raises(ValueError, match="runner=dask"):
        DataRefreshRun(runner="local", distributed_dedup=True)
