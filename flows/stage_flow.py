"""What every stage flow does around its own work, written once: claim the output folder, point
MLflow at the store, open the stage's run with its sections as params, and record the finished
output (manifest and resolved config) in that run.

    stage = StageFlow.start("build_shards", {"shards": shards, "run": run}, run.out,
                            inputs=[run.data])       # refuses a bad --out before any work
    with stage.mlflow_run() as mlflow_run:
        ...                                           # the flow's own work
        stage.record_output()

Starting and opening the run are two steps because some flows look things up in the tracking
store in between (a fine-tuning run's parent is the run that trained its base model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from pydantic import BaseModel

from lmforge.flows.reports import mlflow_run_markdown, publish_markdown, publish_mlflow_run
from lmforge.flows.stages import stage_named
from lmforge.flows.tracking import configure_tracking, log_stage_manifest, section_values, stage_run
from lmforge.manifest import claim_output_dir
from lmforge.recipes import log_config


@dataclass(frozen=True)
class StageFlow:
    """One run of stage `name` (a `flows.stages` name) configured by `sections` (the flow's
    parameters by name: `{"shards": ..., "run": ...}`), writing the folder `out` (resolved)."""

    name: str
    sections: Mapping[str, BaseModel]
    out: Path

    @classmethod
    def start(
        cls,
        name: str,
        sections: Mapping[str, BaseModel],
        out: str | Path,
        inputs: Iterable[str | Path | dict[str, Any]] | None = None,
    ) -> StageFlow:
        """Claim `out` for the stage against `inputs` (OutputRefused naming the folder, before
        any work; None: the flow or its work claims it itself), then point MLflow at the store
        chosen earlier in this process (a pipeline's), else one beside `out`."""
        out = Path(out).resolve()
        if inputs is not None:
            claim_output_dir(out, name, inputs)
        configure_tracking(out.parent, keep_existing=True)
        return cls(name, sections, out)

    @contextlib.contextmanager
    def mlflow_run(
        self,
        parent_run_id: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Iterator[mlflow.ActiveRun]:
        """The stage's MLflow run (`tracking.stage_run`: a child of `parent_run_id`, else of
        the enclosing pipeline's run), with the sections and `params` as its params and `tags`
        (lineage: what the stage read) set before the work starts; the flow run links to it
        from then on (`reports.publish_mlflow_run`)."""
        params = {**section_values(self.sections), **(params or {})}
        with stage_run(self.name, params, parent_run_id) as run:
            if tags:
                mlflow.set_tags(dict(tags))
            info = run.info
            publish_mlflow_run(
                self.name, mlflow.get_tracking_uri(), info.experiment_id, info.run_id,
                info.run_name,
            )  # fmt: skip
            yield run

    def record_output(self, context: str = "input") -> dict[str, Any]:
        """Log the finished output folder into the active run: its manifest (counts as metrics,
        inputs as datasets of `context`) and its resolved config; returns the manifest."""
        manifest = log_stage_manifest(self.out, context=context)
        self.record_config()
        return manifest

    def record_config(self) -> None:
        """`config.yaml` in `out` and in the active run: the sections and the command that
        repeats this run (`recipes.log_config`)."""
        log_config(self.sections, self.out, stage_named(self.name).command)

    def publish_summary(self, run: mlflow.ActiveRun, markdown: str) -> None:
        """The flow run's `<name>-summary` Prefect artifact: a title, the link to `run`, then
        `markdown`."""
        info = run.info
        link = mlflow_run_markdown(
            mlflow.get_tracking_uri(), info.experiment_id, info.run_id, info.run_name
        )
        publish_markdown(
            f"{self.name.replace('_', '-')}-summary",
            f"# {self.name}\n\nMLflow run: {link}\n\n{markdown}",
        )
