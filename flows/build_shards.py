"""`build_shards`: train the tokenizer and write Arrow token shards from a dataset."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow, task

from lmforge.flows.params import ShardsRun
from lmforge.flows.reports import mlflow_run_markdown, publish_markdown
from lmforge.flows.stages import stage_named
from lmforge.flows.tracking import (
    configure_tracking,
    log_stage_manifest,
    section_values,
    stage_run,
)
from lmforge.manifest import claim_output_dir
from lmforge.recipes import log_config
from lmforge.tasks.tokens.shards import STAGE, ShardConfig
from lmforge.tasks.tokens.shards import build_shards as build_token_shards


@task(name="tokenize-and-shard")
def build_shards_task(data_dir: str, out_dir: str, config: ShardConfig) -> dict:
    return build_token_shards(data_dir, out_dir, config)


@flow(name="build_shards", log_prints=True)
def build_shards(shards: ShardConfig = ShardConfig(), run: ShardsRun = ShardsRun()) -> dict:
    """Train a byte-level BPE tokenizer on the kept documents and write train/val token shards.

    `shards` decides the tokenizer, the split and the shards; `run` names the folders."""
    out = Path(run.out).resolve()
    claim_output_dir(out, STAGE, [run.data, shards.tokenizer_path])  # before any work
    configure_tracking(out.parent, keep_existing=True)
    sections = {"shards": shards, "run": run}
    with stage_run("build_shards", section_values(sections)) as mlflow_run:
        manifest = build_shards_task(run.data, run.out, shards)
        log_stage_manifest(out)
        log_config(sections, out, stage_named("build_shards").command)
        mlflow.log_artifact(str(out / "tokenizer.json"), artifact_path="tokenizer")
        splits = manifest["splits"]
        tokenizer = manifest["tokenizer"]
        mlflow_link = mlflow_run_markdown(
            mlflow.get_tracking_uri(), mlflow_run.info.experiment_id, mlflow_run.info.run_id
        )
        publish_markdown(
            "build-shards-summary",
            f"# build_shards\n\nMLflow run: {mlflow_link}\n\n"
            f"Tokenizer: {tokenizer['vocab_size']} tokens, sha256 `{tokenizer['sha256'][:16]}`; "
            f"shards in `{out}`\n\n"
            "| split | documents | tokens | bytes/token |\n|---|---|---|---|\n"
            + "".join(
                f"| {name} | {s['documents']} | {s['tokens']} | {s['bytes'] / max(s['tokens'], 1):.2f} |\n"
                for name, s in splits.items()
            ),
        )
    print(f"build_shards: {splits['train']['tokens']} train / {splits['val']['tokens']} val tokens -> {out}")
    return manifest
