"""Deployments on a real Prefect server: registered with UI forms, their parameters, schedules and
triggers. (A run of one on a process worker: `test_integration_servers`.)"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

POOL = "lmforge-test"
# Each flow's deployment, named after the command that runs the same stage from a shell, and
# its module entrypoint.
DEPLOYMENTS = {
    "pipeline": "pipeline/lmforge-run",
    "data_refresh": "data_refresh/lmforge-data-refresh",
    "build_shards": "build_shards/lmforge-shards-build",
    "pretrain": "pretrain/lmforge-train",
    "evaluate": "evaluate/lmforge-eval",
    "retrain": "retrain/lmforge-retrain",
    "ablation": "ablation/lmforge-ablate",
}
ENTRYPOINTS = {name: f"lmforge.flows.{name}.{name}" for name in DEPLOYMENTS} | {
    "ablation": "lmforge.flows.ablation.ablate"
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Where the worker starts flow runs: relative parameters resolve here."""
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def registered(prefect_api, workspace):
    from lmforge.flows.deployments import register_deployments

    return register_deployments(POOL, working_dir=workspace)


def read_deployment(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def test_every_deployment_on_the_process_pool_with_module_entrypoints(registered, workspace):
    assert len(registered) == len(DEPLOYMENTS)
    for flow_name, full_name in DEPLOYMENTS.items():
        deployment = read_deployment(full_name)
        assert deployment.work_pool_name == POOL
        assert deployment.job_variables == {"working_dir": str(workspace)}
        assert deployment.entrypoint == ENTRYPOINTS[flow_name]


def test_parameter_forms_carry_the_pydantic_descriptions(registered):
    schema = read_deployment(DEPLOYMENTS["pipeline"]).parameter_openapi_schema
    fields = schema["definitions"]["PipelineRun"]["properties"]
    assert fields["work_dir"]["description"].startswith("Every stage writes a subdirectory here")
    assert schema["definitions"]["TrainConfig"]["properties"]["max_steps"]["minimum"] == 1
    evaluation = schema["definitions"]["EvalConfig"]["properties"]  # the pipeline's `eval` section
    assert "Validation tokens" in evaluation["max_val_tokens"]["description"]
    assert schema["properties"]["eval"]["$ref"].endswith("/EvalConfig")
    train = read_deployment(DEPLOYMENTS["pretrain"]).parameter_openapi_schema
    assert "Optimizer steps" in train["definitions"]["TrainConfig"]["properties"]["max_steps"]["description"]


def test_data_refresh_has_a_weekly_cron_schedule_that_starts_paused(registered):
    schedules = read_deployment(DEPLOYMENTS["data_refresh"]).schedules
    assert len(schedules) == 1
    assert schedules[0].schedule.cron == "0 3 * * 0"
    assert schedules[0].active is False
    assert read_deployment(DEPLOYMENTS["pipeline"]).schedules == []


def test_reregistering_updates_the_schedule_in_place(registered, workspace):
    from lmforge.flows.deployments import register_deployments

    again = register_deployments(
        POOL, schedule_cron="30 4 * * 1", schedule_active=True, working_dir=workspace
    )
    assert again == registered
    schedules = read_deployment(DEPLOYMENTS["data_refresh"]).schedules
    assert [(s.schedule.cron, s.active) for s in schedules] == [("30 4 * * 1", True)]
    register_deployments(POOL, working_dir=workspace)  # back to the defaults for the other tests


def test_cli_deploy_registers_on_the_named_pool(registered, workspace, capsys):
    from lmforge.cli import main

    argv = ["deploy", "--work-pool", POOL, "--cron", "0 5 * * 6", "--working-dir", str(workspace)]
    assert main(argv) == 0
    assert f"Registered {len(DEPLOYMENTS)} deployments on work pool {POOL!r}" in capsys.readouterr().out
    schedules = read_deployment(DEPLOYMENTS["data_refresh"]).schedules
    assert [(s.schedule.cron, s.active) for s in schedules] == [("0 5 * * 6", False)]


def test_deploy_wires_the_refresh_loop_source_dataset_and_retrain_trigger(
    registered, workspace, capsys
):
    from prefect.client.orchestration import get_client

    from lmforge.cli import main
    from lmforge.flows.data_refresh import DATASET_UPDATED, dataset_resource_id

    argv = ["deploy", "--work-pool", POOL, "--working-dir", str(workspace),
            "--refresh-crawl", "CC-MAIN-2025-08", "--files-per-run", "3", "--dataset", "work/ds"]
    for _ in range(2):  # registering again replaces the trigger, never adds a second one
        assert main(argv) == 0
    refresh = read_deployment(DEPLOYMENTS["data_refresh"]).parameters["run"]
    assert refresh == {"crawl": "CC-MAIN-2025-08", "files_per_run": 3, "out": "work/ds"}
    assert read_deployment(DEPLOYMENTS["retrain"]).parameters["run"] == {"dataset": "work/ds"}
    with get_client(sync_client=True) as client:
        retrain_id = read_deployment(DEPLOYMENTS["retrain"]).id
        automations = [a for a in client.read_automations()
                       if str(retrain_id) in str(a.actions)]  # fmt: skip
    assert len(automations) == 1
    trigger = automations[0].trigger
    assert trigger.expect == {DATASET_UPDATED}
    assert trigger.match.model_dump()["prefect.resource.id"] == dataset_resource_id(
        workspace / "work" / "ds"
    )
    register_deployments_defaults(workspace)


def register_deployments_defaults(workspace) -> None:
    from lmforge.flows.deployments import register_deployments

    register_deployments(POOL, working_dir=workspace)  # back to the defaults for the other tests


def test_cli_deploy_rejects_a_bad_cron_string(capsys):
    from lmforge.cli import main

    assert main(["deploy", "--cron", "every sunday"]) == 2
    assert "invalid data_refresh schedule" in capsys.readouterr().err

