"""What a person does in a browser: start `pipeline` from its form in the Prefect UI, watch it
complete, then find its parent run and the stage runs under it in the MLflow UI.

Headless Debian Chromium driven by Playwright (its own browser downloads are never used).
Screenshots go to work/test-artifacts/browser/ (git-ignored).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Offline and quiet: no GPU, no sandbox (root in CI), no calls home.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "work" / "test-artifacts" / "browser"
RUN_NAME = "run-from-the-browser"
# A stage setting typed into the form (`eval` -> max_new_tokens; its default is 48): only the
# evaluation then differs from a run with the deployment's defaults.
FORM_MAX_NEW_TOKENS = 7


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        yield page
        browser.close()
    print(f"screenshots: {SCREENSHOTS}")


def screenshot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def flow_run_named(services, name: str, timeout: float = 120.0):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from lmforge.servers import prefect_client_settings

    deadline = time.monotonic() + timeout
    with prefect_client_settings(services):
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
                )
                if runs:
                    return runs[0]
                time.sleep(1)
            names = [run.name for run in client.read_flow_runs(limit=20)]
    pytest.fail(f"no flow run named {name!r} appeared after submitting the form; runs: {names}")


def page_text(page) -> str:
    """What the page shows, for a failure message."""
    return " | ".join(page.inner_text("body").split("\n"))[:3000]


def log_in(page, services) -> None:
    """The Prefect UI's login page, filled with the login `lmforge up` printed."""
    from lmforge.servers import prefect_auth_string

    page.goto(services.prefect_url)
    page.get_by_placeholder("admin:pass").fill(prefect_auth_string(services))
    page.get_by_role("button", name="Login").click()
    page.wait_for_url(lambda url: "/login" not in url)


@pytest.fixture(scope="module")
def run_from_the_form(page, lmforge_services):
    """Deployments -> pipeline -> Run -> Custom run -> edit the form (the run's name, and
    `eval` -> max_new_tokens) -> Submit; then the flow run's page until it shows Completed.
    Returns the flow run."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    log_in(page, lmforge_services)
    page.goto(f"{lmforge_services.prefect_url}/deployments")
    row = page.locator("tr", has=page.get_by_role("link", name="pipeline", exact=True))
    row.get_by_role("link", name="lmforge-run").click()
    page.wait_for_url("**/deployments/deployment/**")
    screenshot(page, "1-prefect-deployment")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.get_by_text("Every stage writes a subdirectory here").wait_for()
    # Each field is a `.schema-form-property` holding its description; the innermost one that
    # holds this description is max_new_tokens itself, inside the `eval` section's card.
    max_new_tokens = page.locator(
        ".schema-form-property", has=page.get_by_text("Tokens generated per prompt.")
    ).last.locator("input[type=number]")
    # The Run Name field, filled last: the form may still re-render while it settles, and a
    # reset name would start a run under a generated one. The other parameters keep the
    # deployment's defaults (a tiny pipeline in work/ui, shared with the integration test:
    # whichever runs second reuses the stages this form does not change).
    run_name = page.locator("input[type=text]").first
    for field, value in ((max_new_tokens, str(FORM_MAX_NEW_TOKENS)), (run_name, RUN_NAME)):
        field.fill(value)
    expect(max_new_tokens).to_have_value(str(FORM_MAX_NEW_TOKENS))
    expect(run_name).to_have_value(RUN_NAME)
    screenshot(page, "2-prefect-run-form")
    page.get_by_role("button", name="Submit", exact=True).click()
    # The deployment's Runs tab lists the new run by name; without it the page says why (kept
    # in the failure message: a CI machine keeps no screenshots).
    try:
        page.get_by_text(RUN_NAME, exact=True).first.wait_for(timeout=60_000)
    except PlaywrightTimeout:
        pytest.fail(f"no run named {RUN_NAME} after Submit; the page shows: {page_text(page)}")
    finally:
        screenshot(page, "2b-prefect-after-submit")
    flow_run = flow_run_named(lmforge_services, RUN_NAME)
    page.goto(f"{lmforge_services.prefect_url}/runs/flow-run/{flow_run.id}")
    deadline = time.monotonic() + 300
    state = page.get_by_text(re.compile(r"^(Completed|Failed|Crashed)$")).first
    while time.monotonic() < deadline:
        if state.is_visible():
            break
        time.sleep(3)
        page.reload()
    screenshot(page, "3-prefect-flow-run")
    return flow_run


def test_a_pipeline_started_from_the_prefect_form_completes(run_from_the_form, page):
    from playwright.sync_api import expect

    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    assert page.get_by_text(RUN_NAME).first.is_visible()


def test_a_stage_setting_typed_into_the_form_is_what_the_stage_ran_with(
    run_from_the_form, lmforge_services
):
    from mlflow.tracking import MlflowClient

    assert run_from_the_form.parameters["eval"]["max_new_tokens"] == FORM_MAX_NEW_TOKENS
    client = MlflowClient(tracking_uri=lmforge_services.mlflow_url)
    experiment = client.get_experiment_by_name("lmforge")
    [parent] = client.search_runs(
        [experiment.experiment_id],
        f"tags.`prefect.flow_run_id` = '{run_from_the_form.id}' "
        "and tags.`lmforge.stage` = 'pipeline'",
    )
    [evaluation] = client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`lmforge.stage` = 'evaluate'",
    )
    assert evaluation.data.params["eval.max_new_tokens"] == str(FORM_MAX_NEW_TOKENS)
    assert evaluation.data.tags.get("lmforge.cache") != "hit"  # evaluated with it, not reused


def test_the_mlflow_ui_shows_the_parent_run_with_its_stage_runs(
    run_from_the_form, page, lmforge_services
):
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect

    client = MlflowClient(tracking_uri=lmforge_services.mlflow_url)
    experiment = client.get_experiment_by_name("lmforge")
    parent = client.search_runs(
        [experiment.experiment_id],
        f"tags.`prefect.flow_run_id` = '{run_from_the_form.id}' "
        "and tags.`lmforge.stage` = 'pipeline'",
    )[0]
    page.goto(f"{lmforge_services.mlflow_url}/#/experiments/{experiment.experiment_id}/runs")
    expect(page.get_by_role("link", name=re.compile("^pipeline")).first).to_be_visible(
        timeout=60_000
    )
    # The expander beside the parent's name shows the child runs nested under it.
    parent_cell = page.get_by_role("gridcell").filter(
        has=page.get_by_role("link", name=parent.info.run_name, exact=True)
    )
    parent_cell.get_by_role("button").first.click()
    for stage in ("data_refresh", "build_shards", "pretrain", "evaluate"):
        expect(page.get_by_role("link", name=re.compile(f"^{stage}( |$)")).first).to_be_visible()
    screenshot(page, "4-mlflow-runs")
    page.goto(
        f"{lmforge_services.mlflow_url}/#/experiments/{experiment.experiment_id}"
        f"/runs/{parent.info.run_id}"
    )
    expect(page.get_by_text("Child runs", exact=True)).to_be_visible(timeout=60_000)
    for stage in ("data_refresh", "build_shards", "pretrain", "evaluate"):
        expect(page.get_by_role("link", name=re.compile(f"^{stage}( |$)")).first).to_be_visible()
    screenshot(page, "5-mlflow-pipeline-run")
