"""`build_shards`: train the tokenizer and write Arrow token shards from a dataset."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow, task

from lmforge.flows.params import ShardParams
from lmforge.flows.reports import mlflow_run_markdown, publish_markdown
from lmforge.flows.tracking import configure_tracking, log_stage_manifest, stage_run
from lmforge.manifest import claim_output_dir
from lmforge.tasks.tokens.shards import STAGE
from lmforge.tasks.tokens.shards import build_shards as build_token_shards


@task(name="tokenize-and-shard")
def build_shards_task(params: ShardParams) -> dict:
    return build_token_shards(
        params.data,
        params.out,
        vocab_size=params.vocab_size,
        min_frequency=params.min_frequency,
        shard_tokens=params.shard_tokens,
        val_fraction=params.val_fraction,
        seed=params.seed,
        tokenizer_path=params.tokenizer_path,
        sample_bytes=params.sample_bytes,
        language_temperature=params.language_temperature,
        language_weights=params.language_weights,
        max_repeats=params.max_repeats,
        sample_seed=params.sample_seed,
    )


@flow(name="build_shards", log_prints=True)
def build_shards(params: ShardParams = ShardParams(), parent_run_id: str | None = None) -> dict:
    """Train a byte-level BPE tokenizer on the kept documents and write train/val token shards."""
    out = Path(params.out).resolve()
    claim_output_dir(out, STAGE, [params.data, params.tokenizer_path])  # before any work
    configure_tracking(out.parent, keep_existing=True)
    with stage_run("build_shards", params.model_dump(), parent_run_id) as run:
        manifest = build_shards_task(params)
        log_stage_manifest(out)
        mlflow.log_artifact(str(out / "tokenizer.json"), artifact_path="tokenizer")
        splits = manifest["splits"]
        tokenizer = manifest["tokenizer"]
        mlflow_link = mlflow_run_markdown(
            mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id
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
