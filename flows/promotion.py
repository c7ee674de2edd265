"""Gated promotion in the MLflow Model Registry: a new version of a model line becomes
`@champion` only when it beats the current champion on the line's pinned held-out set;
`promote` and `rollback` move the alias by hand.

The held-out set is pinned when the line's first version is gated: the val split of the data
stage it was trained on (or a user's set), logged as an MLflow artifact and named on the
registered model (HELDOUT_URI_TAG, its sha256, its document count), so later versions are
scored on the same documents even after the dataset grows or is deleted. Every move is
recorded on the version (`lmforge.gate.*` tags and a paragraph of its description), in the
registered model's champion history (CHAMPION_HISTORY_TAG, what rollback walks back) and,
inside a Prefect flow run, as a markdown artifact `promotion-<model>`.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lmforge.errors import LmforgeError, one_line
from lmforge.flows.registry import version_checkpoint
from lmforge.flows.reports import publish_markdown
from lmforge.manifest import sha256_file
from lmforge.tasks.ablation.compare import PRIMARY_METRIC, lower_is_better
from lmforge.tasks.evaluate.checkpoint import EvalConfig
from lmforge.tasks.promotion.gate import (
    CHALLENGER,
    PROMOTED_MANUALLY,
    REJECTED,
    ROLLED_BACK,
    Decision,
    GateConfig,
    decide,
    now_utc,
)
from lmforge.tasks.promotion.heldout_set import score_checkpoint, write_pinned_set
from lmforge.tasks.tokens.shards import ShardConfig
from lmforge.tracking_tags import (
    CHAMPION_HISTORY_TAG,
    CHECKPOINT_TAG,
    GATE_CHAMPION_VALUE_TAG,
    GATE_CHAMPION_VERSION_TAG,
    GATE_DECIDED_AT_TAG,
    GATE_METRIC_TAG,
    GATE_MIN_MARGIN_TAG,
    GATE_OUTCOME_TAG,
    GATE_REASON_TAG,
    GATE_VALUE_TAG,
    GATE_VERSION_TAG,
    HELDOUT_DOCUMENTS_TAG,
    HELDOUT_SCORE_PREFIX,
    HELDOUT_SHA256_TAG,
    HELDOUT_SOURCE_TAG,
    HELDOUT_URI_TAG,
)

__all__ = ["Decision", "GateConfig", "gate_new_version", "promote", "rollback"]

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
HELDOUT_ARTIFACT_DIR = "heldout"
DEFAULT_VAL_FRACTION = ShardConfig.model_fields["val_fraction"].default
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # MLflow's codes for "no such"


class PromotionError(LmforgeError, ValueError):
    """A model or version that is not in the registry, or a move that cannot be made."""


@dataclass(frozen=True)
class PinnedSet:
    """A model line's held-out set: the MLflow artifact, its sha256 and document count."""

    uri: str
    sha256: str
    documents: int


# --- the gate ----------------------------------------------------------------------------------


def gate_new_version(
    registered_name: str,
    version: str,
    checkpoint_dir: str | Path,
    data_dir: str | Path | None,
    config: GateConfig,
    work_dir: str | Path,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    evaluation: EvalConfig | None = None,
) -> Decision:
    """Score version `version` of `registered_name` (trained into `checkpoint_dir`) on the model
    line's pinned held-out set and make it `@champion` if it beats the current one on
    `config.metric` by `config.min_margin`; else `@challenger`, or delete it (`on_reject`).

    The line's first gate pins the set: `config.heldout`, else the documents of the data stage
    `data_dir` in the val split at `val_fraction` (as build_shards made it). Scratch files
    (the set, its shards per tokenizer) go under `work_dir`; `evaluation` sets the validation
    cut, batch size and device. A champion without a recorded score on the set is scored from
    its checkpoint. Returns the recorded Decision. Raises PromotionError for an unknown
    model or version, a champion that can no longer be scored, or a pinned set that is gone;
    HeldoutError/ManifestError for a held-out source that cannot be read.
    """
    client = MlflowClient()
    work_dir = Path(work_dir)
    candidate = model_version(client, registered_name, version)
    champion = current_champion(client, registered_name)
    if champion is not None and str(champion.version) == str(candidate.version):
        raise PromotionError(f"version {version} of {registered_name} is @champion already")
    pinned = pinned_set(client, registered_name) or pin_heldout_set(
        client, candidate, work_dir, data_dir, val_fraction, config.heldout
    )
    heldout = fetch_pinned_set(pinned, registered_name, work_dir)
    value = score_version(client, candidate, checkpoint_dir, heldout, pinned, work_dir, evaluation)
    champion_value = None
    if champion is not None:
        champion_value = recorded_score(champion, config.metric, pinned)
        if champion_value is None:
            scores = score_version(
                client, champion, champion_checkpoint(champion, work_dir), heldout, pinned,
                work_dir, evaluation,
            )  # fmt: skip
            champion_value = scores[config.metric]
    decision = decide(
        registered_name, str(candidate.version), value[config.metric],
        str(champion.version) if champion else None, champion_value, config, pinned.sha256,
    )  # fmt: skip
    if decision.is_champion:
        make_champion(client, registered_name, str(candidate.version))
    elif decision.outcome == CHALLENGER:
        client.set_registered_model_alias(registered_name, CHALLENGER_ALIAS, candidate.version)
    record_decision(client, decision, candidate)
    if decision.outcome == REJECTED:
        client.delete_model_version(registered_name, candidate.version)
    return decision


def pin_heldout_set(
    client: MlflowClient,
    version: ModelVersion,
    work_dir: Path,
    data_dir: str | Path | None,
    val_fraction: float,
    heldout: str | None,
) -> PinnedSet:
    """Write the line's held-out set (see `write_pinned_set`), log it as an MLflow artifact and
    name it on the registered model."""
    if heldout is None and data_dir is None:
        raise PromotionError(
            f"{version.name} has no pinned held-out set yet: give the data directory the version "
            "was trained on, or a held-out set (gate.heldout)"
        )
    local = work_dir / HELDOUT_ARTIFACT_DIR / "pinning.jsonl"
    documents = write_pinned_set(
        local, data_dir=data_dir, val_fraction=val_fraction, heldout=heldout
    )
    sha256 = sha256_file(local)
    pinned_path = local.replace(local.with_name(f"{sha256}.jsonl"))
    run_id = log_heldout_artifact(client, version, pinned_path)
    pinned = PinnedSet(
        f"runs:/{run_id}/{HELDOUT_ARTIFACT_DIR}/{pinned_path.name}", sha256, documents
    )
    if heldout is not None:
        source = str(Path(heldout).resolve())
    else:
        source = f"val split of {Path(data_dir).resolve()} (val_fraction={val_fraction})"
    tags = {
        HELDOUT_URI_TAG: pinned.uri,
        HELDOUT_SHA256_TAG: sha256,
        HELDOUT_DOCUMENTS_TAG: str(documents),
        HELDOUT_SOURCE_TAG: source,
    }
    for key, value in tags.items():
        client.set_registered_model_tag(version.name, key, value)
    return pinned


def log_heldout_artifact(client: MlflowClient, version: ModelVersion, path: Path) -> str:
    """Log the held-out file to the active MLflow run, else to a short run of its own in the
    experiment of the version's training run; returns the run's id."""
    active = mlflow.active_run()
    if active is not None:
        mlflow.log_artifact(str(path), HELDOUT_ARTIFACT_DIR)
        return active.info.run_id
    experiment_id = None
    if version.run_id:
        try:
            experiment_id = client.get_run(version.run_id).info.experiment_id
        except MlflowException:  # the training run was deleted: the current experiment will do
            pass
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"held-out set of {version.name}"
    ) as run:
        mlflow.log_artifact(str(path), HELDOUT_ARTIFACT_DIR)
        return run.info.run_id


def pinned_set(client: MlflowClient, registered_name: str) -> PinnedSet | None:
    """The held-out set pinned for the model line, None before its first gate."""
    tags = client.get_registered_model(registered_name).tags
    if HELDOUT_URI_TAG not in tags:
        return None
    return PinnedSet(
        tags[HELDOUT_URI_TAG], tags[HELDOUT_SHA256_TAG], int(tags.get(HELDOUT_DOCUMENTS_TAG, 0))
    )


def fetch_pinned_set(pinned: PinnedSet, registered_name: str, work_dir: Path) -> Path:
    """The pinned set as a local file `work_dir/heldout/<sha256>.jsonl`, downloaded from MLflow
    unless already there; PromotionError when it is gone or its content changed."""
    local = work_dir / HELDOUT_ARTIFACT_DIR / f"{pinned.sha256}.jsonl"
    if local.is_file() and sha256_file(local) == pinned.sha256:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=local.parent) as scratch:
        try:
            downloaded = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=pinned.uri, dst_path=scratch)
            )
        except (MlflowException, OSError) as error:
            raise PromotionError(
                f"the held-out set pinned for {registered_name} ({pinned.uri}) cannot be "
                f"downloaded ({error}): restore that run's artifacts"
            ) from error
        if sha256_file(downloaded) != pinned.sha256:
            raise PromotionError(
                f"the held-out set pinned for {registered_name} ({pinned.uri}) no longer has "
                f"sha256 {pinned.sha256}: its versions' scores would not compare"
            )
        downloaded.replace(local)
    return local


def score_version(
    client: MlflowClient,
    version: ModelVersion,
    checkpoint_dir: str | Path,
    heldout: Path,
    pinned: PinnedSet,
    work_dir: Path,
    evaluation: EvalConfig | None,
) -> dict[str, float]:
    """The version's scores on the pinned set (`score_checkpoint`), also kept on the version
    as `lmforge.heldout.<metric>` tags beside the set's sha256."""
    scores = score_checkpoint(checkpoint_dir, heldout, work_dir / "heldout-shards", evaluation)
    tags = {HELDOUT_SHA256_TAG: pinned.sha256}
    tags.update({HELDOUT_SCORE_PREFIX + name: repr(value) for name, value in scores.items()})
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)
    return scores


def recorded_score(version: ModelVersion, metric: str, pinned: PinnedSet | None) -> float | None:
    """The version's `metric` on the pinned set when it was scored there, else None."""
    value = version.tags.get(HELDOUT_SCORE_PREFIX + metric)
    if value is None or pinned is None or version.tags.get(HELDOUT_SHA256_TAG) != pinned.sha256:
        return None
    return float(value)


def champion_checkpoint(champion: ModelVersion, work_dir: Path) -> Path:
    """The champion's training output, to score it on a set it has no score on: its folder,
    else the files its training run logged to MLflow (fetched under `work_dir`)."""
    path = champion.tags.get(CHECKPOINT_TAG)
    if path and Path(path).is_dir():
        return Path(path)
    try:
        return version_checkpoint(champion, work_dir / "champion" / f"v{champion.version}")
    except (MlflowException, OSError, ValueError) as error:
        raise PromotionError(
            f"champion version {champion.version} of {champion.name} has no score on the pinned "
            f"held-out set, its checkpoint {path or '(not recorded)'} is gone and MLflow holds "
            f"no copy ({one_line(error)}): make another version champion with "
            f"`lmforge promote {champion.name} VERSION`"
        ) from None


# --- manual moves ------------------------------------------------------------------------------


def promote(registered_name: str, version: str, reason: str | None = None) -> Decision:
    """Make version `version` of `registered_name` `@champion` by hand, whatever its scores;
    recorded like a gate decision. PromotionError for an unknown model or version, or one that
    is champion already."""
    client = MlflowClient()
    candidate = model_version(client, registered_name, version)
    champion = current_champion(client, registered_name)
    if champion is not None and str(champion.version) == str(candidate.version):
        raise PromotionError(f"version {version} of {registered_name} is @champion already")
    replacing = f", replacing version {champion.version}" if champion else ""
    decision = manual_decision(
        client, candidate, champion, PROMOTED_MANUALLY,
        f"Version {candidate.version} of {registered_name} was made @champion by hand"
        f"{replacing}: {(reason or 'no reason given').rstrip('.')}.",
    )  # fmt: skip
    make_champion(client, registered_name, str(candidate.version))
    record_decision(client, decision, candidate)
    return decision


def rollback(registered_name: str) -> Decision:
    """Move `@champion` back to the version that held it before the current one (the champion
    history's previous entry still in the registry); repeatable down to the line's first
    champion. PromotionError when there is no champion or no earlier one."""
    client = MlflowClient()
    require_registered_model(client, registered_name)
    champion = current_champion(client, registered_name)
    if champion is None:
        raise PromotionError(f"{registered_name} has no @champion to roll back")
    history = champion_history(client, registered_name)
    if not history or history[-1] != str(champion.version):  # the alias was moved elsewhere
        history.append(str(champion.version))
    history.pop()
    while history and not version_exists(client, registered_name, history[-1]):
        history.pop()
    if not history:
        raise PromotionError(
            f"{registered_name} had no champion before version {champion.version}: nothing to "
            "roll back to"
        )
    restored = client.get_model_version(registered_name, history[-1])
    decision = manual_decision(
        client, restored, champion, ROLLED_BACK,
        f"@champion of {registered_name} was rolled back from version {champion.version} to "
        f"version {restored.version}, its champion before.",
    )  # fmt: skip
    client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, restored.version)
    set_champion_history(client, registered_name, history)
    record_decision(client, decision, restored)
    add_paragraph(
        client, champion,
        f"{decision.decided_at} — demoted: @champion was rolled back to version "
        f"{restored.version}.",
    )  # fmt: skip
    return decision


def manual_decision(
    client: MlflowClient,
    candidate: ModelVersion,
    champion: ModelVersion | None,
    outcome: str,
    reason: str,
) -> Decision:
    """A manual move as a Decision, with both versions' recorded scores on the pinned set
    (None where one was never scored there) on the metric the candidate was gated on."""
    pinned = pinned_set(client, candidate.name)
    metric = candidate.tags.get(GATE_METRIC_TAG) or PRIMARY_METRIC
    return Decision(
        registered_name=candidate.name,
        outcome=outcome,
        metric=metric,
        lower_is_better=lower_is_better(metric),
        candidate_version=str(candidate.version),
        candidate_value=recorded_score(candidate, metric, pinned),
        champion_version=str(champion.version) if champion else None,
        champion_value=recorded_score(champion, metric, pinned) if champion else None,
        min_margin=0.0,
        reason=reason,
        heldout_sha256=pinned.sha256 if pinned else None,
        decided_at=now_utc(),
    )


# --- the registry ------------------------------------------------------------------------------


def require_registered_model(client: MlflowClient, registered_name: str) -> None:
    """PromotionError naming the model and the store when it is not registered there."""
    try:
        client.get_registered_model(registered_name)
    except MlflowException as error:
        if error.error_code not in MISSING:
            raise
        raise PromotionError(
            f"no registered model is called {registered_name!r} in {mlflow.get_tracking_uri()}"
        ) from error


def model_version(client: MlflowClient, registered_name: str, version: str) -> ModelVersion:
    """The version; PromotionError naming the model, or the versions it has, when it is not in
    the registry."""
    require_registered_model(client, registered_name)
    try:
        return client.get_model_version(registered_name, str(version))
    except MlflowException as error:
        if error.error_code not in MISSING:
            raise
        versions = sorted(
            (str(v.version) for v in client.search_model_versions(f"name = '{registered_name}'")),
            key=int,
        )
        listing = f"its versions are {', '.join(versions)}" if versions else "it has no versions"
        raise PromotionError(f"{registered_name} has no version {version}: {listing}") from error


def version_exists(client: MlflowClient, registered_name: str, version: str) -> bool:
    try:
        client.get_model_version(registered_name, version)
    except MlflowException:
        return False
    return True


def current_champion(client: MlflowClient, registered_name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(registered_name, CHAMPION_ALIAS)
    except MlflowException:
        return None


def champion_history(client: MlflowClient, registered_name: str) -> list[str]:
    """The versions that were @champion, oldest first (the current one last)."""
    tag = client.get_registered_model(registered_name).tags.get(CHAMPION_HISTORY_TAG, "")
    return [version for version in tag.split(",") if version]


def set_champion_history(client: MlflowClient, registered_name: str, history: list[str]) -> None:
    client.set_registered_model_tag(registered_name, CHAMPION_HISTORY_TAG, ",".join(history))


def make_champion(client: MlflowClient, registered_name: str, version: str) -> None:
    """Point @champion at `version` and append it to the champion history (after the champion
    it replaces, when the alias was set outside lmforge); a @challenger alias on it is dropped."""
    history = champion_history(client, registered_name)
    previous = current_champion(client, registered_name)
    if previous is not None and (not history or history[-1] != str(previous.version)):
        history.append(str(previous.version))
    client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, version)
    set_champion_history(client, registered_name, [*history, version])
    challenger = client.get_registered_model(registered_name).aliases.get(CHALLENGER_ALIAS)
    if challenger is not None and str(challenger) == str(version):
        client.delete_registered_model_alias(registered_name, CHALLENGER_ALIAS)


# --- the record --------------------------------------------------------------------------------


def decision_tags(decision: Decision) -> dict[str, str]:
    """The `lmforge.gate.*` tags of a decision; a value it does not have is an empty string,
    so a tag of an earlier decision cannot outlive it."""

    def text(value: float | str | None) -> str:
        return "" if value is None else repr(value) if isinstance(value, float) else str(value)

    return {
        GATE_OUTCOME_TAG: decision.outcome,
        GATE_METRIC_TAG: decision.metric,
        GATE_VALUE_TAG: text(decision.candidate_value),
        GATE_CHAMPION_VERSION_TAG: text(decision.champion_version),
        GATE_CHAMPION_VALUE_TAG: text(decision.champion_value),
        GATE_MIN_MARGIN_TAG: text(decision.min_margin),
        GATE_REASON_TAG: decision.reason,
        GATE_DECIDED_AT_TAG: decision.decided_at,
        HELDOUT_SHA256_TAG: text(decision.heldout_sha256),
    }


def record_decision(client: MlflowClient, decision: Decision, version: ModelVersion) -> None:
    """Record `decision` on the version (tags, a paragraph on top of its description), or, for
    a version about to be deleted, on its training run; and as the flow run's markdown
    artifact when there is one."""
    tags = decision_tags(decision)
    if decision.outcome == REJECTED:
        if version.run_id:
            tags[GATE_VERSION_TAG] = f"{version.name}:{version.version}"
            for key, value in tags.items():
                client.set_tag(version.run_id, key, value)
    else:
        if decision.heldout_sha256 is None:  # a manual move on a line never gated
            del tags[HELDOUT_SHA256_TAG]  # keep what the version's scores were on, if anything
        for key, value in tags.items():
            client.set_model_version_tag(version.name, version.version, key, value)
        add_paragraph(client, version, decision.paragraph())
    publish_markdown(artifact_key(decision.registered_name), decision.markdown())


def add_paragraph(client: MlflowClient, version: ModelVersion, paragraph: str) -> None:
    """Put `paragraph` on top of the version's description, keeping the earlier ones."""
    current = client.get_model_version(version.name, version.version).description
    text = f"{paragraph}\n\n{current}" if current else paragraph
    client.update_model_version(version.name, version.version, description=text)


def artifact_key(registered_name: str) -> str:
    """`promotion-<model>`: Prefect artifact keys allow lower-case letters, digits and dashes."""
    return "promotion-" + (
        re.sub(r"[^a-z0-9]+", "-", registered_name.lower()).strip("-") or "model"
    )
