"""The `pretrain` flow's Prefect artifacts: a progress bar that follows the optimizer steps and a
summary that links the MLflow run."""

from __future__ import annotations

from uuid import uuid4

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from shard_fixtures import write_shards_dir

from lmforge.flows.params import TrainParams
from lmforge.flows.pretrain import TrainingProgress, pretrain
from lmforge.flows.tracking import find_stage_run


def latest_artifact(key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=50
        )
    return max(found, key=lambda artifact: artifact.created) if found else None


def test_pretrain_publishes_finished_progress_and_a_summary_linking_its_mlflow_run(
    prefect_api, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr("lmforge.flows.tracking._configured_uri", None)
    documents = [[(7 * i + j) % 60 + 2 for j in range(40)] for i in range(12)]
    shards = write_shards_dir(tmp_path / "shards", documents, documents[:3], vocab_size=64)
    params = TrainParams(
        shards=str(shards), out=str(tmp_path / "train"), preset="tiny", max_steps=3,
        batch_size=2, seq_len=16, eval_every=2, checkpoint_every=100, device="cpu",
    )  # fmt: skip
    summary = pretrain(params)

    assert summary["completed"] and summary["steps"] == 3
    progress = latest_artifact("pretrain-progress")
    assert progress is not None and float(progress.data) == 100.0
    report = latest_artifact("pretrain-summary")
    run = find_stage_run(tmp_path / "train")
    assert run is not None and run.info.run_id in report.data
    assert "MLflow run:" in report.data and "mlflow ui --backend-store-uri" in report.data


def test_training_progress_moves_in_whole_percents_and_survives_a_failing_api(monkeypatch):
    sent = []
    monkeypatch.setattr(
        "lmforge.flows.pretrain.update_progress_artifact",
        lambda artifact_id, progress: sent.append(progress),
    )
    progress = TrainingProgress(uuid4(), max_steps=400)
    for step in (1, 2, 4, 5, 10, 10, 400):
        progress(step)
    assert sent == [1.0, 2.0, 100.0]

    def refuse(artifact_id, progress):
        raise ConnectionError("Prefect API unreachable")

    monkeypatch.setattr("lmforge.flows.pretrain.update_progress_artifact", refuse)
    failing = TrainingProgress(uuid4(), max_steps=10)
    failing(5)  # logged, not raised
    assert failing.artifact_id is None
    TrainingProgress(None, max_steps=10)(5)  # outside a flow run: nothing to update
