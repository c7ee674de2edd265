"""Against the real thing: `lmforge up`'s Prefect server, MLflow server and process worker on
127.0.0.1; a `pipeline` run triggered through the API as the UI's Run button does, traced in
MLflow from the parent run down to each stage's inputs."""

from __future__ import annotations

import re

import pytest
from conftest import wait_for_final_state

pytestmark = pytest.mark.slow
STAGES = {"data_refresh", "build_shards", "pretrain", "evaluate"}


@pytest.fixture(scope="module")
def triggered_run(lmforge_services):
    """A pipeline flow run created from the deployment with the form's parameters, run by the
    worker that `lmforge up` started."""
    from prefect.client.orchestration import get_client

    from lmforge.servers import prefect_client_settings

    with prefect_client_settings(lmforge_services):  # the server demands its login
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("pipeline/lmforge-run")
            # The form as the UI fills it from the deployment's defaults: a tiny pipeline in
            # work/ui. After the browser test's run there, its stages are reused (still traced).
            form = dict(deployment.parameters)
            flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=form)
            state = wait_for_final_state(client, flow_run.id, timeout=300, poll=2)
            artifacts = client.read_artifacts()
    return deployment, flow_run, state, artifacts


@pytest.fixture(scope="module")
def mlflow_runs(lmforge_services, triggered_run):
    from mlflow.tracking import MlflowClient

    _, flow_run, state, _ = triggered_run
    assert state.is_completed(), f"flow run ended {state!r}: see {lmforge_services.state_dir}/logs"
    client = MlflowClient(tracking_uri=lmforge_services.mlflow_url)
    experiment = client.get_experiment_by_name("lmforge")
    # Reused stages are recorded by the pipeline's own flow run: select the parent by stage too.
    parents = client.search_runs(
        [experiment.experiment_id],
        f"tags.`prefect.flow_run_id` = '{flow_run.id}' and tags.`lmforge.stage` = 'pipeline'",
    )
    assert len(parents) == 1, [run.info.run_name for run in parents]
    parent = parents[0]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return parent, {run.data.tags["lmforge.stage"]: run for run in children}


def test_the_triggered_run_completes_on_the_worker(triggered_run, lmforge_services):
    _, _, state, _ = triggered_run
    assert state.is_completed(), f"{state!r}: see {lmforge_services.state_dir}/logs"
    assert (lmforge_services.working_dir / "work" / "ui" / "eval" / "results.json").is_file()


def test_mlflow_has_the_pipeline_run_linked_to_its_prefect_flow_run(mlflow_runs, triggered_run):
    deployment, flow_run, _, _ = triggered_run
    parent, _ = mlflow_runs
    assert parent.info.run_name.startswith("pipeline") and parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.deployment_id"] == str(deployment.id)
    assert parent.data.params["run.work_dir"] == "work/ui"
    assert "val_loss" in parent.data.metrics


def test_each_stage_run_is_named_by_its_stage_and_what_tells_it_apart(mlflow_runs):
    _, children = mlflow_runs
    assert all(run.info.run_name.split()[0] == stage for stage, run in children.items())
    assert children["pretrain"].info.run_name == "pretrain tiny 2 steps data-v1"


def test_each_stage_is_a_child_run_whose_inputs_chain_by_digest(mlflow_runs, triggered_run):
    _, flow_run, _, _ = triggered_run
    _, children = mlflow_runs
    assert set(children) == STAGES
    for stage, run in children.items():
        assert run.info.status == "FINISHED", stage
        assert run.data.tags["prefect.root_flow_run_id"] == str(flow_run.id), stage
        assert run.inputs.dataset_inputs, f"{stage} logged no inputs"
    inputs = {
        stage: {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
        for stage, run in children.items()
    }
    assert all(inputs["data_refresh"].values())  # the sample WARC files, each by its sha256
    assert set(inputs["build_shards"]) == {"data_refresh"}
    assert set(inputs["pretrain"]) == {"build_shards"}
    assert set(inputs["evaluate"]) == {"pretrain", "build_shards"}
    assert inputs["evaluate"]["build_shards"] == inputs["pretrain"]["build_shards"]


def test_the_pipeline_report_links_to_its_mlflow_run(mlflow_runs, triggered_run, lmforge_services):
    parent, _ = mlflow_runs
    _, flow_run, _, artifacts = triggered_run
    reports = [a for a in artifacts if a.key == "pipeline-summary"]
    report = next(a for a in reports if a.flow_run_id == flow_run.id)
    assert f"{lmforge_services.mlflow_url}/#/experiments/" in report.data
    assert parent.info.run_id in report.data
    assert re.search(r"\| evaluate \| (ran|cached) \|", report.data)
