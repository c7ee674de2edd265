"""Prefect deployments of the lmforge flows, for a process work pool, so the UI can run them.

Entry points are module paths (`lmforge.flows.pipeline.pipeline`): a process worker on any
machine where lmforge is installed loads them without a copy of this repository. Parameters are
the flows' pydantic models, so the UI's Run button shows a form with their descriptions. Each
deployment is named after the command that does the same from a shell (`pretrain/lmforge-train`
runs what `lmforge train` runs), so no two look alike on the Deployments page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron
from pydantic import ValidationError

from lmforge.recipes import merged_mapping

DEFAULT_WORK_POOL = "lmforge"
# Sunday 03:00: a weekly crawl refresh at a quiet hour.
DEFAULT_REFRESH_CRON = "0 3 * * 0"
# The dataset the refresh deployment grows and the retrain deployment trains on.
DEFAULT_DATASET = "work/dataset"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow, under which name, with what description."""

    flow: Flow
    name: str
    description: str


def deployment_name(command: str) -> str:
    """`lmforge-shards-build`: the deployment of the stage the CLI runs as `command`."""
    return "lmforge-" + "-".join(command.split())


def deployment_specs() -> list[DeploymentSpec]:
    """The flows the UI can trigger (the registry's deployed stages), in pipeline order."""
    from lmforge.flows.stages import STAGES

    return [
        DeploymentSpec(stage.flow(), deployment_name(stage.command), stage.summary)
        for stage in STAGES
        if stage.deployed
    ]


def ensure_process_work_pool(name: str) -> None:
    """Create the process work pool `name` unless it exists; refuse one of another type."""
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
            return
    if pool.type != "process":
        raise ValueError(
            f"work pool {name!r} exists with type {pool.type!r}; lmforge deploys to a process "
            "pool — pass another --work-pool name"
        )


def register_deployments(
    work_pool: str = DEFAULT_WORK_POOL,
    *,
    schedule_cron: str = DEFAULT_REFRESH_CRON,
    schedule_active: bool = False,
    timezone: str = "UTC",
    working_dir: str | Path | None = None,
    parameters: Mapping[str, dict] | None = None,
    dataset: str = DEFAULT_DATASET,
    refresh_source: Mapping[str, Any] | None = None,
) -> list[UUID]:
    """Register (create or update) the lmforge deployments on a process work pool.

    The refresh loop: `data_refresh` writes `dataset` (read from `refresh_source`: the
    DataRefreshRun fields input, crawl, files_per_run, ...) on the cron schedule
    `schedule_cron`, paused unless `schedule_active` (turn it on from the UI's deployment page);
    `retrain` reads `dataset` and is triggered by the event a refresh emits when it added
    documents (an automation on the server, see `retrain_trigger`). Flow runs start in
    `working_dir`, where relative parameters such as `work_dir=work/pipeline` resolve; without
    it a process worker runs each flow in a temporary directory that it deletes afterwards.
    `parameters` (by flow name, e.g. `{"pipeline": {"train": {...}, "run": {...}}}`) become a
    deployment's defaults, which the UI's Quick run uses and its Custom run form starts from.
    Needs a reachable Prefect API (`PREFECT_API_URL`). Returns the deployment ids in
    `deployment_specs()` order.
    """
    check_schedule(schedule_cron, timezone)
    ensure_process_work_pool(work_pool)
    root = Path(working_dir).resolve() if working_dir else Path.cwd()
    job_variables = {"working_dir": str(root)} if working_dir else None
    loop = {
        "data_refresh": {"run": {**(refresh_source or {}), "out": dataset}},
        "retrain": {"run": {"dataset": dataset}},
    }
    ids = []
    for spec in deployment_specs():
        schedules, triggers = None, None
        if spec.flow.name == "data_refresh":
            schedules = [
                Cron(schedule_cron, timezone=timezone, active=schedule_active, slug="data-refresh")
            ]
        if spec.flow.name == "retrain":
            triggers = [retrain_trigger(root / dataset)]
        defaults = merged_mapping(
            loop.get(spec.flow.name, {}), (parameters or {}).get(spec.flow.name) or {}
        )
        deployment = spec.flow.to_deployment(
            name=spec.name,
            description=spec.description,
            schedules=schedules,
            triggers=triggers,
            parameters=defaults or None,
            tags=["lmforge"],
            work_pool_name=work_pool,
            job_variables=job_variables,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        # `apply` directly rather than `prefect.deploy`, which only prints a failed deployment.
        ids.append(deployment.apply(work_pool_name=work_pool))
    return ids


def retrain_trigger(dataset: Path) -> DeploymentEventTrigger:
    """Run `retrain` each time a refresh adds documents to `dataset` (the event
    `data_refresh.announce_version` emits), once per event."""
    from lmforge.flows.data_refresh import DATASET_UPDATED, dataset_resource_id

    return DeploymentEventTrigger(
        name=f"retrain when {dataset.name} grows",
        description=f"A data_refresh added documents to {dataset}: retrain, evaluate, gate.",
        expect={DATASET_UPDATED},
        match={"prefect.resource.id": dataset_resource_id(dataset)},
        posture="Reactive",
        threshold=1,
    )


def check_schedule(cron: str, timezone: str) -> None:
    """Fail before touching the server when the cron string or time zone is invalid."""
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as error:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise ValueError(f"invalid data_refresh schedule: {problems}") from None
