"""The MLflow tags lmforge writes, named once: the flows write them, `lmforge lineage` and the
CLI read them, so a renamed tag cannot leave a reader looking for the old name.

Runs carry them as run tags; a registered model version carries CHECKPOINT, its digest,
TRAINING_RUN_ID and EVAL_RUN_ID as model-version tags, and the scores of that newest evaluation
under their metric names (`val_loss`, `val_ppl`, `val_bpb`, `blimp_acc`): see
`lmforge.flows.registry.record_evaluation`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

STAGE_TAG = "lmforge.stage"  # the stage's flow name (`pretrain`), or `pipeline`
VERSION_TAG = "lmforge.version"  # the lmforge package version that ran the stage
CODE_VERSION_TAG = "lmforge.code_version"  # digest of lmforge's source, the stage cache's key
OUTPUT_DIR_TAG = "lmforge.output_dir"  # the stage's finished output folder, resolved
CACHE_TAG = "lmforge.cache"  # "hit" on a pipeline step reused from the stage cache
CACHED_STAGES_TAG = "lmforge.cached_stages"  # the pipeline's reused steps, comma-separated
SHARDS_TAG = "lmforge.shards"  # the shards folder a training run read
SHARDS_DIGEST_TAG = "lmforge.shards_manifest_sha256"
CHECKPOINT_TAG = "lmforge.checkpoint"  # the checkpoint folder a model or evaluation came from
CHECKPOINT_DIGEST_TAG = "lmforge.checkpoint_manifest_sha256"
TRAINING_RUN_ID_TAG = "lmforge.training_run_id"  # the run that trained the checkpoint
MODEL_VERSIONS_TAG = "lmforge.model_versions"  # `name:version,...` registered from that run
EVAL_RUN_ID_TAG = "lmforge.eval_run_id"  # on a model version: its newest evaluation run
BASE_MODEL_TAG = "lmforge.base_model"  # the pretrained folder a fine-tuning run started from
BASE_MODEL_DIGEST_TAG = "lmforge.base_model_digest"
BASE_RUN_ID_TAG = "lmforge.base_run_id"  # the run that trained that base model
# Gated promotion (`lmforge.flows.promotion`). On a registered model: its line's pinned held-out
# set (an MLflow artifact URI, its sha256 and document count, where it was drawn from) and the
# versions that were @champion, oldest first. On a version: its scores on that set
# (`lmforge.heldout.val_bpb`, ...) with the set's sha256, and the last gate decision.
HELDOUT_URI_TAG = "lmforge.heldout.uri"
HELDOUT_SHA256_TAG = "lmforge.heldout.sha256"
HELDOUT_DOCUMENTS_TAG = "lmforge.heldout.documents"
HELDOUT_SOURCE_TAG = "lmforge.heldout.source"
HELDOUT_SCORE_PREFIX = "lmforge.heldout."  # + metric name
CHAMPION_HISTORY_TAG = "lmforge.champion_history"  # comma-separated version numbers
GATE_OUTCOME_TAG = "lmforge.gate.outcome"
GATE_METRIC_TAG = "lmforge.gate.metric"
GATE_VALUE_TAG = "lmforge.gate.value"
GATE_CHAMPION_VERSION_TAG = "lmforge.gate.champion_version"
GATE_CHAMPION_VALUE_TAG = "lmforge.gate.champion_value"
GATE_MIN_MARGIN_TAG = "lmforge.gate.min_margin"
GATE_REASON_TAG = "lmforge.gate.reason"
GATE_DECIDED_AT_TAG = "lmforge.gate.decided_at"
GATE_VERSION_TAG = "lmforge.gate.version"  # on a training run whose refused version was deleted


def find_stage_run(output_dir: str | Path) -> mlflow.entities.Run | None:
    """The newest MLflow run whose stage output (OUTPUT_DIR_TAG) is `output_dir`, in the current
    tracking store; None when no run wrote it, or when its path cannot be quoted in a filter."""
    runs = stage_runs_of(output_dir, max_results=1)
    return runs[0] if runs else None


def stage_runs_of(output_dir: str | Path, max_results: int = 100) -> list[mlflow.entities.Run]:
    """The MLflow runs that wrote or reused stage output `output_dir`, newest first ([] when its
    path cannot be quoted in a filter)."""
    path = str(Path(output_dir).resolve())
    if "'" in path:  # cannot be quoted in a filter string
        return []
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{OUTPUT_DIR_TAG}` = '{path}'",
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
        output_format="list",
    )
