"""`StageFlow`: the bookkeeping every stage flow does around its own work — the output folder
claimed before anything is touched, one MLflow run with the sections as params and the lineage
tags, the finished output's manifest and config recorded in it."""

from __future__ import annotations

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from lmforge.errors import OutputRefused
from lmforge.flows.params import ShardsRun
from lmforge.flows.stage_flow import StageFlow
from lmforge.manifest import stage_output
from lmforge.tasks.tokens.shards import ShardConfig


@pytest.fixture
def fresh_store(tmp_path, monkeypatch):
    """No tracking store chosen yet in this process, none named by the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("lmforge.flows.tracking._configured_uri", None)
    yield
    mlflow.set_tracking_uri(None)


def test_a_refused_output_folder_stops_the_stage_before_the_tracking_store_is_made(
    tmp_path, fresh_store
):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file, not an lmforge output")
    with pytest.raises(OutputRefused, match="shards"):
        StageFlow.start("build_shards", {}, out, inputs=[])
    assert not (tmp_path / "mlflow.db").exists()


def test_the_stage_run_has_the_sections_params_and_tags_and_records_the_output(
    tmp_path, fresh_store
):
    data = tmp_path / "data"
    data.mkdir()
    sections = {"shards": ShardConfig(vocab_size=300), "run": ShardsRun(data=str(data))}
    stage = StageFlow.start("build_shards", sections, tmp_path / "shards", inputs=[data])
    with stage.mlflow_run(tags={"lineage.read": "data"}, params={"files": 3}) as run:
        with stage_output(stage.out, "build_shards", params={}) as output:
            (output.path / "tokens.txt").write_text("written by the stage's own work")
            output.counts["documents"] = 7
        manifest = stage.record_output()
    logged = MlflowClient().get_run(run.info.run_id)

    assert (tmp_path / "mlflow.db").is_file()  # the store beside the output folder
    assert logged.data.params["shards.vocab_size"] == "300"
    assert logged.data.params["files"] == "3"
    assert logged.data.tags["lmforge.stage"] == "build_shards"
    assert logged.data.tags["lineage.read"] == "data"
    assert logged.data.tags["lmforge.output_dir"] == str(stage.out)
    assert logged.data.metrics["documents"] == 7.0
    assert manifest["counts"]["documents"] == 7
    config = yaml.safe_load((stage.out / "config.yaml").read_text())
    assert config["command"] == "shards build" and config["shards"]["vocab_size"] == 300
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "manifest"} <= artifacts
