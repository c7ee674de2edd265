"""`data_refresh`: WARC files in, a deduplicated, filtered Parquet dataset out.

Per-file work is mapped over the task runner the parameters choose (local processes or Dask),
cached by input digest + DataConfig + code version so that a rerun after a crash skips the files
already processed, and retried with backoff. Progress, the per-step funnel and the language mix
go to Prefect artifacts and MLflow. A refresh holds the output folder's lock from start to
finish: a second refresh into the same folder is refused at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff

from lmforge.flows.params import DataRefreshRun
from lmforge.flows.reports import (
    mlflow_run_markdown,
    publish_markdown,
    publish_table,
    rename_flow_run,
)
from lmforge.flows.runners import make_task_runner
from lmforge.flows.stage_cache import code_version
from lmforge.flows.stage_flow import StageFlow
from lmforge.flows.tracking import run_name, stage_flow_run_name
from lmforge.manifest import (
    claim_output_dir,
    input_sha256,
    manifest_version,
    output_lock,
    read_manifest,
)
from lmforge.tasks import plots
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.dataset_writer import STAGE_NAME
from lmforge.tasks.data.refresh import DatasetRefresh
from lmforge.tasks.data.dedup import DuplicateReport
from lmforge.tasks.data.dedup_dask import (
    DaskDedup,
    DistributedDedupSettings,
    DistributedDuplicates,
    prefers_distributed_dedup,
)
from lmforge.tasks.data.inputs import InputError, InputsUnavailable, check_remote_inputs, input_name
from lmforge.tasks.data.sample.corpus import build_sample_corpus
from lmforge.tasks.data.warc_processing import FileResult, process_warc_file
from lmforge.tracking_tags import CODE_VERSION_TAG

log = logging.getLogger(__name__)

# Called as (files done, files in total, name of the file just finished), in the flow's process.
ProgressListener = Callable[[int, int, str], None]
_progress_listeners: list[ProgressListener] = []
# The data_refresh flow run's logger: its `process-warc-files` subflow writes the per-file lines
# there, in the Logs tab people open (the subflow's own run is a click further).
_refresh_log: contextvars.ContextVar[logging.LoggerAdapter | None] = contextvars.ContextVar(
    "lmforge_refresh_log", default=None
)
RESULTS_DIR = ".results"
# The Prefect event of a dataset version that added documents (see `announce_version`).
DATASET_UPDATED = "lmforge.dataset.updated"
# Errors that another attempt of the same file cannot fix (an InputError has had its network
# retries already, with backoff, while reading).
_FINAL_ERRORS = (InputError, FileNotFoundError, PermissionError, IsADirectoryError)


@contextlib.contextmanager
def file_progress(listener: ProgressListener) -> Iterator[None]:
    """Call `listener` each time a WARC file finishes while the block runs (the CLI's bar)."""
    _progress_listeners.append(listener)
    try:
        yield
    finally:
        _progress_listeners.remove(listener)


def file_cache_key(warc_path: str | Path, config: DataConfig) -> str:
    """What decides a WARC file's per-file result: its content, the DataConfig, the code."""
    path = Path(warc_path)
    # Remote inputs are keyed by URL: crawl files are immutable once published.
    content = input_sha256(path) if "://" not in str(warc_path) else str(warc_path)
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    key = hashlib.sha256("\n".join((content, config_json, code_version())).encode())
    return f"process-warc-file-{key.hexdigest()}"


def processed_file(
    warc_path: Path | str, config: DataConfig, staging_dir: Path,
    extraction_cache: Path | None = None,
) -> FileResult:  # fmt: skip
    """`process_warc_file`, or the result an earlier, unfinished refresh recorded for the same
    key (`file_cache_key`) in `staging_dir/.results/KEY.json`. The record is data, validated
    by `FileResult.from_json` (types, format, staged files and their sha256), never unpickled:
    a record that fails validation is ignored and the file processed again."""
    record = staging_dir / RESULTS_DIR / f"{file_cache_key(warc_path, config)}.json"
    if record.is_file():
        try:
            cached = FileResult.from_json(record.read_text(), staging_dir)
        except (ValueError, UnicodeDecodeError) as error:
            log.warning("ignoring the cached result %s (%s): processing %s again",
                        record, error, input_name(warc_path))  # fmt: skip
        else:
            log.info("%s: reusing the result of an earlier run (%s)", cached.warc_file, record)
            return cached
    result = process_warc_file(warc_path, config, staging_dir, extraction_cache)
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_name(f".{record.name}.tmp-{os.getpid()}")
    partial.write_text(result.to_json())
    partial.replace(record)  # a crash never leaves a half-written record under the real name
    return result


def _file_task_run_name() -> str:
    from prefect.runtime import task_run

    return f"process {input_name(task_run.parameters['warc_path'])}"


def _worth_retrying(task, task_run, state) -> bool:
    return not isinstance(state.result(raise_on_failure=False), _FINAL_ERRORS)


# No Prefect cache or result persistence: the crash-resume cache is `processed_file`'s JSON.
@task(
    name="process-warc-file",
    task_run_name=_file_task_run_name,
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=_worth_retrying,
)
def process_warc_file_task(
    warc_path: Path | str, config: DataConfig, staging_dir: Path,
    extraction_cache: Path | None = None,
) -> FileResult:
    return processed_file(warc_path, config, staging_dir, extraction_cache)


@flow(name="process-warc-files")
def process_warc_files(
    files: list[Path | str], config: DataConfig, staging_dir: Path,
    extraction_cache: Path | None = None,
) -> list[FileResult]:
    """Per-file work, mapped over the task runner chosen by the caller. Each result is recorded
    in `staging_dir/.results`, beside the staged files it describes: a rerun after a crash
    finds both, and removing the staging directory removes the cache with it.

    Every file is attempted. Inputs that cannot be read raise InputsUnavailable naming them,
    after the others finished: their results stay in `staging_dir` for the rerun."""
    futures = process_warc_file_task.map(
        files, config=unmapped(config), staging_dir=unmapped(staging_dir),
        extraction_cache=unmapped(extraction_cache),
    )
    progress_id = create_progress_artifact(
        progress=0.0, key="data-refresh-files", description=f"WARC files processed of {len(files)}"
    )
    names = {future.task_run_id: input_name(path) for future, path in zip(futures, files)}
    log = file_log()
    for done, future in enumerate(as_completed(futures), start=1):
        update_progress_artifact(progress_id, progress=100.0 * done / len(files))
        name = names[future.task_run_id]
        outcome = future.result(raise_on_failure=False)
        if isinstance(outcome, FileResult):
            log.info(finished_file_line(name, outcome, done, len(files)))
        else:
            log.warning("%s failed (%s); %d of %d files done", name, outcome, done, len(files))
        for listener in list(_progress_listeners):
            listener(done, len(files), name)
    outcomes = [future.result(raise_on_failure=False) for future in futures]
    unreadable = [outcome for outcome in outcomes if isinstance(outcome, InputError)]
    if unreadable:
        listed = "; ".join(f"{error.location}: {error.reason}" for error in unreadable)
        kept = len(files) - len(unreadable)
        raise InputsUnavailable(
            f"{len(unreadable)} of {len(files)} inputs could not be read, so no dataset "
            f"version was written: {listed}. The {kept} other files were processed and are "
            f"kept in {staging_dir}; run the same refresh again to reuse them, or leave the "
            "unreadable inputs out"
        )
    return futures.result()


def file_log() -> logging.LoggerAdapter:
    """Where the per-file lines go: the enclosing data_refresh flow run's logger, else this
    flow run's. (A function, not the variable itself, in the subflow's body: a process task
    runner pickles that body, and a ContextVar cannot be pickled.)"""
    return _refresh_log.get() or get_run_logger()


def finished_file_line(name: str, result: FileResult, done: int, total: int) -> str:
    """`crawl-00000.warc.gz: 1,204 responses, 377 candidates; 1 of 2 files done`."""
    stats = result.stats
    return (
        f"{name}: {stats.get('responses', 0):,} responses, {stats.get('candidates', 0):,} "
        f"candidates; {done} of {total} files done"
    )


@task(name="find-duplicates")
def find_duplicates_task(
    refresh: DatasetRefresh, results: list[FileResult], dask: DaskDedup | None = None
) -> DuplicateReport | DistributedDuplicates:
    """Duplicates found here, or on Dask and left on disk for the workers to write the version."""
    return refresh.find_duplicates(results, dask)


def dedup_on_dask(
    run: DataRefreshRun, results: list[FileResult], staging: Path
) -> DaskDedup | None:
    """Where the refresh deduplicates: on the Dask cluster when the run asks for it or the new
    documents reach `distributed_dedup_above` (runner=dask only), else None (this process)."""
    documents = sum(r.stats.get("candidates", 0) for r in results)
    if not prefers_distributed_dedup(run.runner, run.distributed_dedup, documents,
                                     run.distributed_dedup_above):  # fmt: skip
        return None
    settings = DistributedDedupSettings(worker_memory_bytes=run.dedup_worker_memory_mib * 2**20)
    return DaskDedup(str(staging / "dedup"), run.dask_address, run.workers, settings)


@task(name="write-dataset")
def write_dataset_task(
    refresh: DatasetRefresh, results: list[FileResult],
    duplicates: DuplicateReport | DistributedDuplicates,
) -> dict:
    return refresh.write(results, duplicates)


def extraction_cache(run: DataRefreshRun) -> Path | None:
    """The run's extraction cache, one folder per code version: other code may extract
    differently."""
    if run.extraction_cache is None:
        return None
    return Path(run.extraction_cache).resolve() / code_version()


def input_files(run: DataRefreshRun, out: Path) -> list[Path | str]:
    """The user's WARC files (paths, globs, URLs, a crawl), or the offline sample built beside
    the output directory."""
    if run.input or run.crawl:
        return run.input_files()
    return build_sample_corpus(out.parent / "sample")


# Dedup statistics that no funnel metric holds (documents in and duplicates removed are
# `docs_in/dedup` and `removed/dedup/...`).
DEDUP_WORK = ("prior_documents", "candidate_pairs", "verified_pairs", "clusters", "largest_cluster")
# The whole dataset after a refresh, under the names `lmforge lineage` reads.
DATASET_TOTALS = ("warc_files", "responses", "kept", "removed", "read_errors")


def dataset_metrics(manifest: Mapping[str, Any]) -> dict[str, float]:
    """A data_refresh output's MLflow metrics, one name per quantity: the funnel of the version
    the refresh added (`stage_metrics`), that version's documents removed per language
    (`removed_by_language/XX/STEP/REASON`) and dedup work (`dedup/clusters`, ...), then the whole
    dataset after it (`DATASET_TOTALS`, `dataset_version`)."""
    counts = manifest["counts"]
    added = manifest.get("version_counts", counts)
    metrics: dict[str, float] = {}
    if "responses" in added:
        rows = plots.funnel_rows(added, step_order=recorded_step_order(manifest))
        metrics.update(stage_metrics(rows, added.get("languages", {})))
    for lang, reasons in (added.get("removed_by_language") or {}).items():
        for slug, n in reasons.items():
            step, _, reason = slug.partition(":")
            name = f"removed_by_language/{_metric_name(lang)}/{_metric_name(step)}"
            metrics[f"{name}/{_metric_name(reason or step)}"] = float(n)
    dedup = added.get("dedup") or {}
    metrics.update({f"dedup/{key}": float(dedup[key]) for key in DEDUP_WORK if key in dedup})
    metrics.update({key: float(counts[key]) for key in DATASET_TOTALS if key in counts})
    metrics["dataset_version"] = float(manifest_version(manifest))
    return metrics


def recorded_step_order(manifest: Mapping[str, Any]) -> list[str]:
    """The text steps in the order the dataset's recorded DataConfig ran them ([] when the
    manifest's params are not a DataConfig this code reads)."""
    try:
        return [step.name for step in DataConfig.from_dict(manifest["params"]).text_steps()]
    except (KeyError, TypeError, ValueError):
        return []


def stage_metrics(rows: Sequence[Mapping[str, Any]], languages: Mapping[str, int]) -> dict:
    """MLflow metrics from the funnel: `docs_in/STEP`, `docs_out/STEP`, `bytes_in/STEP`,
    `bytes_out/STEP`, `removed/STEP/REASON` and `lang/XX` (documents kept per language)."""
    metrics: dict[str, float] = {}
    for row in rows:
        step = _metric_name(row["step"])
        for field in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
            if row.get(field) is not None:
                metrics[f"{field}/{step}"] = float(row[field])
        for reason, n in row["reasons"].items():
            metrics[f"removed/{step}/{_metric_name(reason.split(':', 1)[-1])}"] = float(n)
    for lang, n in languages.items():
        metrics[f"lang/{_metric_name(lang)}"] = float(n)
    return metrics


def _metric_name(text: str) -> str:
    # MLflow allows alphanumerics, _ - . space / in metric names.
    return "".join(c if c.isalnum() or c in "_-./" else "_" for c in str(text))


def report_markdown(
    rows: Sequence[Mapping[str, Any]], counts: Mapping[str, Any], files: int, out: Path,
    mlflow_link: str,
) -> str:  # fmt: skip
    """The flow run's summary for people: funnel, languages, where the data and the run are."""
    lines = [
        "# data_refresh",
        "",
        f"**{counts['kept']:,} of {counts['responses']:,} responses kept** from {files} WARC "
        f"files. Output: `{out}`. MLflow run: {mlflow_link}",
        "",
        "## Funnel",
        "",
        "| step | docs in | docs out | removed | bytes in | bytes out | top reasons |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        top = sorted(row["reasons"].items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{reason} {n}" for reason, n in top)
        lines.append(
            f"| {row['step']} | {row['docs_in']:,} | {row['docs_out']:,} | {row['removed']:,} "
            f"| {_bytes(row['bytes_in'])} | {_bytes(row['bytes_out'])} | {reasons} |"
        )
    languages = counts.get("languages", {})
    lines += ["", "## Languages kept", "", "| language | documents | share |", "|---|---:|---:|"]
    total = sum(languages.values()) or 1
    for lang, n in sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))[:30]:
        lines.append(f"| {lang} | {n:,} | {100 * n / total:.1f}% |")
    return "\n".join(lines) + "\n"


def _bytes(value: int | None) -> str:
    return "" if value is None else f"{value / 1e6:,.2f} MB"


def log_stats(
    manifest: Mapping[str, Any], config: DataConfig, run: mlflow.ActiveRun, out: Path
) -> None:
    """Funnel and languages of the version this refresh added (its per-step statistics and
    dedup, from the manifest) as PNG artifacts, a Prefect table artifact and a markdown report
    artifact on the flow run (their metrics are logged with the manifest: `dataset_metrics`)."""
    counts = manifest.get("version_counts", manifest["counts"])
    files = counts["warc_files"]
    step_order = [step.name for step in config.text_steps()]
    rows = plots.funnel_rows(counts, step_order=step_order)
    languages = counts.get("languages", {})
    with plots.figure_files() as figures:
        plots.removal_funnel(counts, figures / "funnel.png", step_order=step_order)
        plots.language_histogram(languages, figures / "languages.png")
        mlflow.log_artifacts(str(figures), artifact_path="plots")
    info = run.info
    run_link = mlflow_run_markdown(
        mlflow.get_tracking_uri(), info.experiment_id, info.run_id, info.run_name
    )
    table = [{k: v for k, v in row.items() if k != "reasons"} for row in rows]
    publish_table("data-refresh-funnel", table, "Documents and bytes into and out of each step")
    publish_markdown(
        "data-refresh-report", report_markdown(rows, counts, files, out, run_link)
    )


@flow(name="data_refresh", flow_run_name=stage_flow_run_name, log_prints=True)
def data_refresh(data: DataConfig = DataConfig(), run: DataRefreshRun = DataRefreshRun()) -> dict:
    """Read WARC responses, extract main text, identify languages, filter, deduplicate, and
    write kept documents and removal reasons as Parquet with a manifest.

    `data` decides which documents are kept; `run` says where they come from, where they go
    and where the per-file work runs."""
    out = Path(run.out).resolve()
    claim_output_dir(out, STAGE_NAME)  # before anything is built, the sample corpus included
    # Held from start to finish: two refreshes into one folder would share its staging files.
    with output_lock(out, wait=False):
        return _refresh(data, run, out)


def _refresh(config: DataConfig, run: DataRefreshRun, out: Path) -> dict:
    files = input_files(run, out)
    # Claimed again now that the inputs are known: an input inside (or being) `out` is refused.
    stage = StageFlow.start(STAGE_NAME, {"data": config, "run": run}, out, inputs=files)
    refresh = DatasetRefresh(out, config)
    files, done = refresh.pending(files)
    if run.files_per_run is not None and len(files) > run.files_per_run:
        print(f"data_refresh: adding {run.files_per_run} of the {len(files)} new inputs; the "
              "next run adds the following ones")  # fmt: skip
        files = files[: run.files_per_run]
    if refresh.continuing and not files:
        print(f"data_refresh: all {len(done)} inputs are already in {out}; nothing to add")
        # Named at its start for the version it would add: it adds none.
        rename_flow_run(run_name(STAGE_NAME, {"run": run}, reused=True) + " (nothing new)")
        return read_manifest(out)
    check_remote_inputs(files)
    runner = make_task_runner(run.runner, run.workers, run.dask_address)
    staging = out.parent / f".{out.name}.staging"
    staging.mkdir(parents=True, exist_ok=True)
    tags = {CODE_VERSION_TAG: code_version()}
    with stage.mlflow_run(tags=tags, params={"files": len(files)}) as mlflow_run:
        log_token = _refresh_log.set(get_run_logger())
        try:
            results = process_warc_files.with_options(task_runner=runner)(
                files, config, staging, extraction_cache(run)
            )
        finally:
            _refresh_log.reset(log_token)
        duplicates = find_duplicates_task(refresh, results, dedup_on_dask(run, results, staging))
        manifest = write_dataset_task(refresh, results, duplicates)
        stage.record_output()
        log_stats(manifest, config, mlflow_run, out)
    # Only a finished dataset retires the staged files and their cached per-file results.
    shutil.rmtree(staging, ignore_errors=True)
    counts = manifest["counts"]
    print(f"data_refresh: kept {counts['kept']} of {counts['responses']} responses -> {out}")
    announce_version(out, manifest)
    return manifest


def dataset_resource_id(out: str | Path) -> str:
    """The Prefect event resource of the dataset in folder `out` (what a retrain trigger
    matches)."""
    return f"lmforge.dataset.{Path(out).resolve()}"


def announce_version(out: Path, manifest: Mapping[str, Any]) -> None:
    """Emit `DATASET_UPDATED` for a version that kept documents: the event a `retrain`
    deployment's trigger waits for (no event, no retrain: a refresh that added nothing)."""
    added = manifest.get("version_counts", manifest["counts"]).get("kept", 0)
    if not added:
        print("data_refresh: the new version keeps no document; nothing to retrain on")
        return
    emit_event(
        event=DATASET_UPDATED,
        resource={
            "prefect.resource.id": dataset_resource_id(out),
            "prefect.resource.name": out.name,
        },
        payload={"dataset": str(out), "version": manifest_version(manifest),
                 "documents_added": added},
    )  # fmt: skip
