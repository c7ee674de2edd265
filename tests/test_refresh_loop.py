"""The refresh loop against the real thing (`lmforge up`: a Prefect server, an MLflow server, a
process worker): the scheduled `data_refresh` adds one new WARC file, its event triggers the
`retrain` deployment through the server's automation, the gate promotes; a second round with a
deliberately worse setting is refused and `@champion` stays; a refresh with nothing new
triggers nothing. Then the pages a person opens: the retrain deployment with its trigger, and
the retrain flow run with the gate's decision."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
from conftest import wait_for_final_state

pytestmark = pytest.mark.slow
MODEL = "lmforge-loop-test"
GOOD = {"max_steps": 30, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "progress": False}
WORSE = {**GOOD, "max_steps": 4, "lr": 1e-7}
REFRESH = "data_refresh/lmforge-data-refresh"
RETRAIN = "retrain/lmforge-retrain"


def retrain_parameters(train: dict) -> dict:
    return {
        "shards": {"vocab_size": 300},
        "train": train,
        "run": {"dataset": "work/dataset", "work_dir": "work/model",
                "registered_model_name": MODEL},
    }  # fmt: skip


def runs_of(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )


def next_run_of(client, deployment_id, known: set, timeout: float = 90.0):
    """The flow run of `deployment_id` that is not in `known`, once it appears (an automation
    creates it a moment after the event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [run for run in runs_of(client, deployment_id) if run.id not in known]
        if new:
            return new[0]
        time.sleep(2)
    return None


def version_folder(services, version: str) -> Path:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=services.mlflow_url)
    return Path(client.get_model_version(MODEL, version).tags["lmforge.checkpoint"])


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def refresh_round(client, refresh, retrain, train: dict, wait: float = 60.0):
    """Set the retrain deployment's training, start the refresh as its schedule would, and
    follow the chain for `wait` seconds: (refresh state, retrain flow run or None, retrain
    state or None)."""
    from prefect.client.schemas.actions import DeploymentUpdate

    client.update_deployment(retrain.id, DeploymentUpdate(parameters=retrain_parameters(train)))
    known = {run.id for run in runs_of(client, retrain.id)}
    # What the scheduler does at the cron time: a flow run of the deployment, its defaults.
    refresh_run = client.create_flow_run_from_deployment(refresh.id)
    refresh_state = wait_for_final_state(client, refresh_run.id, timeout=240, poll=2)
    assert refresh_state.is_completed(), refresh_state
    triggered = next_run_of(client, retrain.id, known, timeout=wait)
    if triggered is None:
        return refresh_state, None, None
    return refresh_state, triggered, wait_for_final_state(client, triggered.id, 420, poll=2)


@pytest.fixture(scope="module")
def loop(lmforge_services):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from lmforge.servers import prefect_client_settings
    from lmforge.tasks.data.sample.corpus import build_sample_corpus

    workspace = lmforge_services.working_dir
    build_sample_corpus(workspace / "loop-crawl", n_files=2, max_pages=40)
    rounds = {}
    with prefect_client_settings(lmforge_services), get_client(sync_client=True) as client:
        refresh = client.read_deployment_by_name(REFRESH)
        retrain = client.read_deployment_by_name(RETRAIN)
        # What `lmforge deploy --refresh-input 'loop-crawl/*.warc.gz' --files-per-run 1` sets.
        source = {"input": ["loop-crawl/*.warc.gz"], "files_per_run": 1, "out": "work/dataset",
                  "runner": "threads", "workers": 1}  # fmt: skip
        client.update_deployment(refresh.id, DeploymentUpdate(parameters={"run": source}))
        rounds["good"] = refresh_round(client, refresh, retrain, GOOD)
        first = version_folder(lmforge_services, "1")
        rounds["v1 before"] = folder_digest(first)
        rounds["worse"] = refresh_round(client, refresh, retrain, WORSE)
        # Automations act within seconds here (the two rounds above): 20 s of nothing is none.
        rounds["nothing new"] = refresh_round(client, refresh, retrain, GOOD, wait=20.0)
        rounds["v1 after"] = folder_digest(first)
        rounds["retrain"] = retrain
        decisions = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"promotion-{MODEL}"])),
            sort=ArtifactSort.CREATED_DESC,
        )
        rounds["decision"] = decisions[0]
        rounds["automations"] = client.read_automations_by_name(
            "retrain when dataset grows"
        )
    return rounds


def test_the_refresh_event_starts_retrain_which_makes_the_first_champion(loop, lmforge_services):
    from mlflow.tracking import MlflowClient

    _, triggered, state = loop["good"]
    assert triggered is not None, "no retrain run followed the refresh that added a file"
    assert state.is_completed(), f"{state!r}: see {lmforge_services.state_dir}/logs"
    client = MlflowClient(tracking_uri=lmforge_services.mlflow_url)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    assert champion.tags["lmforge.gate.outcome"] == "champion"


def test_a_worse_round_is_refused_and_the_champion_stays(loop, lmforge_services):
    from mlflow.tracking import MlflowClient

    _, triggered, state = loop["worse"]
    assert triggered is not None and state.is_completed(), state
    client = MlflowClient(tracking_uri=lmforge_services.mlflow_url)
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert challenger.tags["lmforge.gate.outcome"] == "challenger"
    # The decision is the newest `promotion-<model>` artifact, on the triggered run.
    assert "challenger" in loop["decision"].data
    assert loop["decision"].flow_run_id == triggered.id
    assert float(challenger.tags["lmforge.gate.value"]) > float(
        challenger.tags["lmforge.gate.champion_value"]
    )


def test_version_one_stays_byte_identical_and_every_version_loads_without_its_folder(
    loop, lmforge_services, tmp_path
):
    import mlflow
    from mlflow.tracking import MlflowClient

    from lmforge.flows.registry import version_checkpoint
    from lmforge.model.checkpoint import load_model

    assert loop["v1 before"] == loop["v1 after"]  # two more rounds into the same work dir
    shutil.rmtree(lmforge_services.working_dir / "work" / "model")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(lmforge_services.mlflow_url)
    try:
        versions = MlflowClient().search_model_versions(f"name = '{MODEL}'")
        assert sorted(v.version for v in versions) == ["1", "2"]
        for version in versions:  # downloaded from the MLflow server's artifact store
            load_model(version_checkpoint(version, tmp_path / f"v{version.version}"))
    finally:
        mlflow.set_tracking_uri(previous)


def test_a_refresh_with_nothing_new_triggers_no_retrain(loop):
    _, triggered, _ = loop["nothing new"]
    assert triggered is None


def test_the_browser_shows_the_trigger_and_the_gate_decision(loop, lmforge_services):
    from test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, log_in, screenshot

    sync_api = pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect

    _, triggered, _ = loop["worse"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        log_in(page, lmforge_services)
        # The retrain deployment's page lists the automation the refresh's event fires.
        page.goto(f"{lmforge_services.prefect_url}/deployments/deployment/{loop['retrain'].id}")
        expect(page.get_by_text("retrain when dataset grows").first).to_be_visible(timeout=30_000)
        screenshot(page, "6-prefect-retrain-deployment")
        # The gate's decision, the newest artifact under its key: the refused second round.
        page.goto(f"{lmforge_services.prefect_url}/artifacts/artifact/{loop['decision'].id}")
        expect(page.get_by_text("challenger").first).to_be_visible(timeout=30_000)
        screenshot(page, "7-prefect-promotion-artifact")
        # The retrain flow run that made it, with the gate among its task runs.
        page.goto(f"{lmforge_services.prefect_url}/runs/flow-run/{triggered.id}")
        expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
        screenshot(page, "8-prefect-retrain-flow-run")
        browser.close()
