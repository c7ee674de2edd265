"""The `pretrain` flow's Prefect artifacts: a progress bar that follows the optimizer steps and a
summary that links the MLflow run."""

from __future__ import annotations

import json
from uuid import uuid4

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings
from shard_fixtures import write_shards_dir

from lmforge.flows.params import PretrainRun
from lmforge.model.checkpoint import load_model
from lmforge.model.config import ModelSpec
from lmforge.model.train import TrainConfig
from lmforge.flows.pretrain import TrainingProgress, pretrain
from lmforge.flows.tracking import prefect_tags
from lmforge.tracking_tags import find_stage_run


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
    summary = pretrain(
        train=TrainConfig(max_steps=3, batch_size=2, seq_len=16, eval_every=2,
                          checkpoint_every=100, device="cpu"),
        run=PretrainRun(shards=str(shards), out=str(tmp_path / "train")),
    )  # fmt: skip

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


def test_a_custom_model_shape_trains_end_to_end_through_the_flow(prefect_api, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr("lmforge.flows.tracking._configured_uri", None)
    documents = [[(5 * i + j) % 60 + 2 for j in range(40)] for i in range(12)]
    shards = write_shards_dir(tmp_path / "shards", documents, documents[:3], vocab_size=64)
    shape = ModelSpec(n_layer=3, d_model=48, n_head=4, n_kv_head=2, qk_norm=True, norm="layernorm")
    summary = pretrain(
        model=shape,
        train=TrainConfig(max_steps=2, batch_size=2, seq_len=16, device="cpu", progress=False),
        run=PretrainRun(shards=str(shards), out=str(tmp_path / "train"), register_model=False),
    )
    assert summary["completed"]
    trained = load_model(tmp_path / "train").config
    assert (trained.n_layer, trained.d_model, trained.n_head, trained.n_kv_head) == (3, 48, 4, 2)
    assert trained.qk_norm and trained.norm == "layernorm"


def test_every_flow_shows_one_section_per_stage_and_no_internal_fields():
    from prefect.utilities.callables import parameter_schema

    from lmforge.flows.build_shards import build_shards
    from lmforge.flows.data_refresh import data_refresh
    from lmforge.flows.evaluate import evaluate
    from lmforge.flows.finetune import finetune_classifier, finetune_instruct
    from lmforge.flows.pipeline import pipeline
    from lmforge.flows.retrain import retrain

    expected = {
        data_refresh: ["data", "run"],
        build_shards: ["shards", "run"],
        pretrain: ["model", "train", "run"],
        evaluate: ["eval", "run"],
        finetune_classifier: ["finetune", "run"],
        finetune_instruct: ["finetune", "run"],
        pipeline: ["data", "shards", "model", "train", "eval", "run"],
        retrain: ["shards", "model", "train", "eval", "gate", "run"],
    }
    for stage_flow, sections in expected.items():
        schema = parameter_schema(stage_flow.fn).model_dump()
        assert list(schema["properties"]) == sections, stage_flow.name
        assert "parent_run_id" not in json.dumps(schema)
        for section in sections:  # every field of every section says what it is for
            definition = schema["definitions"][schema["properties"][section]["$ref"].split("/")[-1]]
            undescribed = [f for f, v in definition["properties"].items() if not v.get("description")]
            assert not undescribed, (stage_flow.name, section, undescribed)
    data = parameter_schema(data_refresh.fn).model_dump()["definitions"]
    assert data["GopherQualityFilter"]["properties"]["min_words"]["description"]


@flow
def tags_linking_this_flow_run() -> dict[str, str]:
    return prefect_tags()


def test_stage_runs_link_their_flow_run_only_where_the_prefect_ui_is_known(prefect_api):
    with temporary_settings(updates={PREFECT_UI_URL: "http://prefect.example:4200"}):
        served = tags_linking_this_flow_run()
    run_id = served["prefect.flow_run_id"]
    assert served["prefect.flow_run_url"] == f"http://prefect.example:4200/runs/flow-run/{run_id}"

    # The command line's default: no Prefect server configured, so no address to link to.
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):
        unserved = tags_linking_this_flow_run()
    assert unserved["prefect.flow_run_id"] != run_id
    assert "prefect.flow_run_url" not in unserved
