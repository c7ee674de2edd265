"""`build_shards`: train the tokenizer and write Arrow token shards from a dataset."""

from __future__ import annotations

import mlflow
from prefect import flow, task

from lmforge.flows.params import ShardsRun
from lmforge.flows.stage_flow import StageFlow
from lmforge.flows.tracking import stage_flow_run_name
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.tasks.tokens.shards import STAGE, ShardConfig
from lmforge.tasks.tokens.shards import build_shards as build_token_shards


@task(name="tokenize-and-shard")
def build_shards_task(data_dir: str, out_dir: str, config: ShardConfig) -> dict:
    return build_token_shards(data_dir, out_dir, config)


@flow(name="build_shards", flow_run_name=stage_flow_run_name, log_prints=True)
def build_shards(shards: ShardConfig = ShardConfig(), run: ShardsRun = ShardsRun()) -> dict:
    """Train a byte-level BPE tokenizer on the kept documents and write train/val token shards.

    `shards` decides the tokenizer, the split and the shards; `run` names the folders."""
    sections = {"shards": shards, "run": run}
    stage = StageFlow.start(STAGE, sections, run.out, inputs=[run.data, shards.tokenizer_path])
    out = stage.out
    with stage.mlflow_run() as mlflow_run:
        manifest = build_shards_task(run.data, run.out, shards)
        stage.record_output()
        mlflow.log_artifact(str(out / TOKENIZER_FILE), artifact_path="tokenizer")
        splits = manifest["splits"]
        tokenizer = manifest["tokenizer"]
        stage.publish_summary(
            mlflow_run,
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
