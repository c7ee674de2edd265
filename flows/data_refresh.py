"""`data_refresh`: WARC files in, a deduplicated, filtered Parquet dataset out."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
from prefect import flow, task, unmapped

from lmforge.flows.params import DataRefreshParams
from lmforge.flows.reports import publish_table, publish_markdown
from lmforge.flows.runners import make_task_runner
from lmforge.flows.tracking import configure_tracking, log_stage_manifest, stage_run
from lmforge.tasks import plots
from lmforge.tasks.data_config import DataConfig
from lmforge.tasks.data_refresh import resolve_inputs
from lmforge.tasks.dataset_writer import find_duplicates, write_dataset
from lmforge.tasks.dedup import DuplicateReport
from lmforge.tasks.warc_processing import FileResult, process_warc_file
from lmforge.tasks.sample_corpus import build_sample_corpus


@task(name="process-warc-file", task_run_name="process {warc_path.name}")
def process_warc_file_task(warc_path: Path, config: DataConfig, staging_dir: Path) -> FileResult:
    return process_warc_file(warc_path, config, staging_dir)


@flow(name="process-warc-files")
def process_warc_files(
    files: list[Path], config: DataConfig, staging_dir: Path
) -> list[FileResult]:
    """Per-file work, mapped over the task runner chosen by the caller."""
    futures = process_warc_file_task.map(
        files, config=unmapped(config), staging_dir=unmapped(staging_dir)
    )
    return futures.result()


@task(name="find-duplicates")
def find_duplicates_task(results: list[FileResult], config: DataConfig) -> DuplicateReport:
    return find_duplicates(results, config)


@task(name="write-dataset")
def write_dataset_task(
    results: list[FileResult], duplicates: DuplicateReport, out: Path, config: DataConfig
) -> dict:
    return write_dataset(results, duplicates, out, config)


def input_files(params: DataRefreshParams, out: Path) -> list[Path]:
    """The user's WARC files, or the offline sample built beside the output directory."""
    if params.input:
        return resolve_inputs(params.input)
    return build_sample_corpus(out.parent / "sample")


@flow(name="data_refresh", log_prints=True)
def data_refresh(
    params: DataRefreshParams = DataRefreshParams(), parent_run_id: str | None = None
) -> dict:
    """Read WARC responses, extract main text, identify languages, filter, deduplicate, and
    write kept documents and removal reasons as Parquet with a manifest."""
    out = Path(params.out).resolve()
    configure_tracking(out.parent, keep_existing=True)
    files = input_files(params, out)
    config = DataConfig(
        languages=tuple(params.languages) if params.languages else None,
        min_lang_score=params.min_lang_score,
    )
    staging = out.parent / f".{out.name}.staging"
    staging.mkdir(parents=True, exist_ok=True)
    with stage_run("data_refresh", {**params.model_dump(), "files": len(files)}, parent_run_id):
        runner = make_task_runner("threads", params.workers)
        results = process_warc_files.with_options(task_runner=runner)(files, config, staging)
        duplicates = find_duplicates_task(results, config)
        manifest = write_dataset_task(results, duplicates, out, config)
        log_stage_manifest(out)
        counts = manifest["counts"]
        with plots.figure_files() as figures:
            plots.removal_funnel(counts, figures / "funnel.png")
            plots.language_histogram(counts.get("languages", {}), figures / "languages.png")
            mlflow.log_artifacts(str(figures), artifact_path="plots")
        publish_table("data-refresh-funnel", plots.funnel_rows(counts), "Documents per stage")
        publish_markdown(
            "data-refresh-summary",
            f"# data_refresh\n\n{counts['kept']} of {counts['responses']} responses kept "
            f"from {len(files)} WARC files.\n\nOutput: `{out}`",
        )
    shutil.rmtree(staging, ignore_errors=True)
    print(f"data_refresh: kept {counts['kept']} of {counts['responses']} responses -> {out}")
    return manifest
