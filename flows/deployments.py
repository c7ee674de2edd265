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
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron
from pydantic import ValidationError

DEFAULT_WORK_POOL = "lmforge"
# Sunday 03:00: a weekly crawl refresh at a quiet hour.
DEFAULT_REFRESH_CRON = "0 3 * * 0"


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
) -> list[UUID]:
    """Register (create or update) the five lmforge deployments on a process work pool.

    `data_refresh` gets the cron schedule `schedule_cron`, paused unless `schedule_active`
    (turn it on from the UI's deployment page). Flow runs start in `working_dir`, where relative
    parameters such as `work_dir=work/pipeline` resolve; without it a process worker runs each
    flow in a temporary directory that it deletes afterwards. `parameters` (by flow name, e.g.
    `{"pipeline": {"train": {...}, "run": {...}}}`) become a deployment's defaults, which the UI's Quick run
    uses and its Custom run form starts from. Needs a reachable Prefect API
    (`PREFECT_API_URL`). Returns the deployment ids in `deployment_specs()` order.
    """
    check_schedule(schedule_cron, timezone)
    ensure_process_work_pool(work_pool)
    job_variables = {"working_dir": str(Path(working_dir).resolve())} if working_dir else None
    ids = []
    for spec in deployment_specs():
        schedules = None
        if spec.flow.name == "data_refresh":
            schedules = [
                Cron(schedule_cron, timezone=timezone, active=schedule_active, slug="data-refresh")
            ]
        deployment = spec.flow.to_deployment(
            name=spec.name,
            description=spec.description,
            schedules=schedules,
            parameters=(parameters or {}).get(spec.flow.name),
            tags=["lmforge"],
            work_pool_name=work_pool,
            job_variables=job_variables,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        # `apply` directly rather than `prefect.deploy`, which only prints a failed deployment.
        ids.append(deployment.apply(work_pool_name=work_pool))
    return ids


def check_schedule(cron: str, timezone: str) -> None:
    """Fail before touching the server when the cron string or time zone is invalid."""
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as error:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise ValueError(f"invalid data_refresh schedule: {problems}") from None
