"""The `lmforge` command line: a verb per workflow, each a thin layer over the Prefect flows.

The stage commands come from the stage registry (`lmforge.flows.stages`) and their flags from
each flow's config sections (`lmforge.recipes`): `--train.lr`, `--model.n_layer`, a recipe file
with `--config`. The CLI, a recipe, the Prefect UI form and the record of a run share one set
of names, defaults and descriptions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from lmforge import __version__
from lmforge.errors import LmforgeError, one_line
from lmforge.flows.stages import STAGES, Stage
from lmforge.recipes import (
    CONFIG_FILE,
    ConfigError,
    ConfigHelpFormatter,
    add_config_flags,
    call_with_sections,
    load_recipe,
    read_config_file,
    resolve_sections,
)
from lmforge.stopping import (
    Stopped,
    end_runs_as_killed,
    exit_now,
    ignoring_stop_signals,
    quiet_console_when_stopping,
    signal_name,
    stop_handlers,
    stop_signal,
    tagged_mlflow_runs,
)
from lmforge.telemetry import TELEMETRY_OFF
from lmforge.tracking_tags import STAGE_TAG

if TYPE_CHECKING:  # lmforge.servers loads when a services command runs
    from lmforge.servers import ServiceConfig

# Offline by default (no telemetry calls). Without PREFECT_API_URL a command serves the Prefect
# API itself (`lmforge.servers.command_prefect_api`), waiting this long for it: patient, since a
# busy machine only makes it slower, and a start that fails is reported at once.
STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
QUIET_ENVIRONMENT = {**TELEMETRY_OFF, STARTUP_TIMEOUT_VARIABLE: "600"}


class CommandParser(argparse.ArgumentParser):
    """A command's parser. A stage command adds its config flags (from its flow's signature)
    when it is first used, so `lmforge --help` and commands that run no flow import no flow."""

    def __init__(self, *args: Any, stage: Stage | None = None, lazy: bool = True, **kwargs: Any):
        if stage is not None:
            kwargs.setdefault("formatter_class", ConfigHelpFormatter)
            # Every field is a flag: the usage line would list hundreds of them.
            kwargs.setdefault("usage", "%(prog)s [--config RECIPE] [--SECTION.FIELD VALUE ...]")
        super().__init__(*args, **kwargs)
        self.stage = stage
        self._config_flags_added = stage is None
        if not lazy:
            self.add_stage_flags()

    def add_stage_flags(self) -> None:
        if self._config_flags_added:
            return
        self._config_flags_added = True
        sections = self.stage.sections()
        add_config_flags(self, sections, flat=flat_order(sections), renames=self.stage.flag_renames)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self.add_stage_flags()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.add_stage_flags()
        return super().format_help()


def flat_order(sections: Mapping[str, Any]) -> list[str]:
    """Sections whose top-level fields also take bare flags (`--max-steps`, `--out`), in the order
    that decides who gets a name two of them share: the orchestration section `run` first."""
    return sorted(sections, key=lambda name: name != "run")


# The word before a stage's own (`data` of `data refresh`) and its help.
COMMAND_GROUPS = {
    "data": "data stage commands",
    "shards": "tokenizer and token shards",
    "finetune": "fine-tune a pretrained model: classification, instruction following",
    "quality": "quality classifiers: train one on reference vs web text",
}


def add_stage_commands(commands: argparse._SubParsersAction, lazy: bool) -> dict[str, Any]:
    """A command per stage of the registry, its flags from the stage's config sections; returns
    the command groups' sub-command actions by word (`data`), for other commands to join."""
    groups: dict[str, argparse._SubParsersAction] = {}
    for stage in STAGES:
        *group, word = stage.command.split()
        parent = commands
        if group:
            if group[0] not in groups:
                groups[group[0]] = commands.add_parser(
                    group[0], help=COMMAND_GROUPS[group[0]]
                ).add_subparsers(dest=f"{group[0]}_command", metavar="COMMAND", required=True)
            parent = groups[group[0]]
        command = parent.add_parser(
            word, help=stage.summary, description=stage.description, stage=stage, lazy=lazy
        )
        command.set_defaults(handler=run_stage, stage=stage)
    return groups


def build_parser(lazy: bool = False) -> argparse.ArgumentParser:
    """The whole command line. `lazy` adds a stage command's flags only when it is parsed (what
    `main` does); otherwise every flow is imported now for its flags."""
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Build a language model from raw web archives: filter, dedup, tokenize, "
        "pretrain, evaluate — every run tracked in MLflow, every stage a Prefect flow.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=CommandParser
    )
    groups = add_stage_commands(commands, lazy)

    sample = groups["data"].add_parser(
        "sample", help="write the built-in offline sample WARC files (Python docs + crawl noise)"
    )
    sample.add_argument("--out", required=True, metavar="DIR", help="directory for the WARC files")
    sample.set_defaults(handler=run_build_sample)

    reproduce = commands.add_parser(
        "reproduce",
        help="run a recorded run again from its config.yaml in MLflow",
        description="Download the config.yaml a run recorded in MLflow and run its command with "
        "it. Flags after RUN_ID override the record, e.g. --work-dir or --out to reproduce into "
        "a fresh folder. On the same inputs the data and shard outputs' digests are the "
        "original's.",
    )
    reproduce.add_argument("run_id", metavar="RUN_ID", help="the MLflow run to repeat")
    reproduce.add_argument("--tracking-uri", metavar="URI", help=TRACKING_URI_HELP)
    reproduce.add_argument(
        "overrides", nargs=argparse.REMAINDER, metavar="FLAGS",
        help="flags of the recorded command that override the record",
    )
    reproduce.set_defaults(handler=run_reproduce)

    lineage = commands.add_parser(
        "lineage",
        help="trace a registered model back to its evaluation, training, shards, data and WARCs",
        description="Print the chain from a registered model version to the raw inputs: "
        "evaluation run and scores, training run and parameters, shard manifest and tokenizer, "
        "data run with filter statistics, input WARC files with digests — all read from MLflow "
        "and the manifests it records.",
    )
    lineage.add_argument("model", metavar="MODEL", help="NAME, NAME:VERSION or NAME@ALIAS")
    lineage.add_argument("--json", action="store_true", help="print the lineage as JSON")
    lineage.add_argument("--tracking-uri", metavar="URI", help=TRACKING_URI_HELP)
    lineage.set_defaults(handler=run_lineage)

    promote = commands.add_parser(
        "promote",
        help="make a registered model version @champion by hand",
        description="Point the @champion alias of MODEL at VERSION, whatever the gate decided, "
        "and record the move on the version (lmforge.gate.* tags, its description) and in the "
        "model's champion history, which `lmforge rollback` walks back.",
    )
    promote.add_argument("model", metavar="MODEL", help="registered model name")
    promote.add_argument("version", metavar="VERSION", help="the version to make champion")
    promote.add_argument("--reason", help="why, recorded with the move")
    promote.add_argument("--tracking-uri", metavar="URI", help=TRACKING_URI_HELP)
    promote.set_defaults(handler=run_promote)

    rollback = commands.add_parser(
        "rollback",
        help="move @champion back to the version that held it before",
        description="Point the @champion alias of MODEL at the previous champion in its "
        "history and record the move; run it again to go further back.",
    )
    rollback.add_argument("model", metavar="MODEL", help="registered model name")
    rollback.add_argument("--tracking-uri", metavar="URI", help=TRACKING_URI_HELP)
    rollback.set_defaults(handler=run_rollback)

    export_parser = commands.add_parser("export", help="export a checkpoint for other tools")
    export = export_parser.add_subparsers(dest="export_command", metavar="COMMAND", required=True)
    export_hf = export.add_parser(
        "hf",
        help="Hugging Face Llama folder (config.json, model.safetensors, tokenizer files)",
        description="Write a checkpoint as a Hugging Face Llama folder that transformers' "
        "AutoModelForCausalLM and AutoTokenizer load. Architectures Llama cannot express "
        "(LayerNorm, GELU, learned positions, QK-norm) are refused.",
    )
    export_hf.add_argument("--checkpoint", required=True, metavar="DIR", help=CHECKPOINT_HELP)
    export_hf.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    export_hf.add_argument("--tokenizer", metavar="PATH", help=TOKENIZER_HELP)
    export_hf.set_defaults(handler=run_export_hf)

    generate = commands.add_parser(
        "generate",
        help="stream a continuation of a prompt from a checkpoint",
        description="Continue --prompt with a checkpoint, printing each piece of text as soon as "
        "it is decoded; stops at <|endoftext|> or after --max-new-tokens tokens.",
    )
    generate.add_argument("--checkpoint", required=True, metavar="DIR", help=CHECKPOINT_HELP)
    generate.add_argument("--prompt", required=True, help="text to continue")
    generate.add_argument("--tokenizer", metavar="PATH", help=TOKENIZER_HELP)
    generate.add_argument(
        "--max-new-tokens", type=int, default=128, help="most tokens to generate (default: 128)"
    )
    generate.add_argument(
        "--temperature", type=float, default=0.8, help="0 is greedy decoding (default: 0.8)"
    )
    generate.add_argument(
        "--top-k", type=int, default=50, help="sample among the k likeliest tokens (default: 50)"
    )
    generate.add_argument(
        "--top-p", type=float, help="sample among the likeliest tokens reaching this probability"
    )
    generate.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    generate.add_argument(
        "--device", help="torch device, e.g. cpu or cuda (default: cuda when available)"
    )
    generate.set_defaults(handler=run_generate)

    deploy = commands.add_parser(
        "deploy",
        help="register the flows as Prefect deployments that a process worker runs",
        description=f"Register {', '.join(s.name for s in STAGES if s.deployed)} as "
        "deployments on a process work pool (created if missing) of the Prefect server at "
        "PREFECT_API_URL, so the UI's Run button shows their parameter forms. data_refresh gets "
        "a cron schedule, paused unless --schedule-active. Start a worker with "
        "`prefect worker start --pool POOL`.",
    )
    deploy.add_argument(
        "--work-pool", default="lmforge", metavar="POOL", help="process work pool (default: lmforge)"
    )
    deploy.add_argument(
        "--cron",
        default="0 3 * * 0",
        help="data_refresh schedule, a cron string (default: '0 3 * * 0', Sundays 03:00)",
    )
    deploy.add_argument(
        "--timezone", default="UTC", help="time zone of --cron, IANA name (default: UTC)"
    )
    deploy.add_argument(
        "--working-dir",
        default=".",
        metavar="DIR",
        help="directory the worker runs flows in, where relative paths such as work/ resolve "
        "(default: the current directory)",
    )
    deploy.add_argument(
        "--schedule-active",
        action="store_true",
        help="turn the data_refresh schedule on now (default: paused until turned on in the UI)",
    )
    loop = deploy.add_argument_group(
        "the refresh loop",
        "What the scheduled data_refresh reads and the dataset it grows; a refresh that adds "
        "documents triggers the retrain deployment on that dataset (all editable in the UI).",
    )
    source = loop.add_mutually_exclusive_group()
    source.add_argument(
        "--refresh-input", nargs="+", metavar="GLOB_OR_URL",
        help="WARC files, globs or URLs each refresh reads (new files in a glob are picked up; "
        "files already in the dataset are skipped)",
    )  # fmt: skip
    source.add_argument(
        "--refresh-crawl", metavar="CC-MAIN-YYYY-WW",
        help="a Common Crawl whose listing each refresh advances through",
    )
    loop.add_argument(
        "--files-per-run", type=positive_int, metavar="N",
        help="files each refresh adds (default: every new one)",
    )
    loop.add_argument(
        "--crawl-base-url", metavar="URL", help="where the crawl is served (a mirror, test server)"
    )
    loop.add_argument(
        "--dataset", default="work/dataset", metavar="DIR",
        help="the dataset the refresh writes and retrain reads, relative to --working-dir "
        "(default: work/dataset)",
    )  # fmt: skip
    deploy.set_defaults(handler=run_deploy)
    clean = commands.add_parser(
        "clean",
        help="delete old stage folders of a pipeline or retrain work dir",
        description="List (or with --yes delete) the stage folders under WORK_DIR/stages that "
        "no link points at, keeping the newest --keep of each stage. Nothing else ever deletes "
        "them: every run writes its own folder. Registered model versions stay loadable from "
        "MLflow, which holds their files.",
    )
    clean.add_argument("work_dir", metavar="WORK_DIR", help="a pipeline's or retrain's work dir")
    clean.add_argument(
        "--keep", type=positive_int, default=1, metavar="N",
        help="newest folders kept per stage, the linked one always (default: 1)",
    )  # fmt: skip
    clean.add_argument("--yes", action="store_true", help="delete them (default: only list)")
    clean.set_defaults(handler=run_clean)
    add_service_commands(commands)
    add_debug_option(parser)
    return parser


DEBUG_HELP = "on an error, show the full traceback instead of one line (or set LMFORGE_DEBUG=1)"


def add_debug_option(parser: argparse.ArgumentParser, default: Any = False) -> None:
    """`--debug` before or after any command word: `lmforge --debug train` or `lmforge train
    --debug`. Below the top it defaults to SUPPRESS so a command's parser keeps the top's value."""
    parser.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in {id(p): p for p in action.choices.values()}.values():
                add_debug_option(command, default=argparse.SUPPRESS)


def add_service_commands(commands: argparse._SubParsersAction) -> None:
    """`up`, `down` and `status` of the local Prefect server, MLflow server and worker."""
    state_help = "where pid files, logs and the servers' databases live (default: work/services)"
    up = commands.add_parser(
        "up",
        help="start a local Prefect server, MLflow server and process worker on 127.0.0.1",
        description="Start, detached, a Prefect server (UI + API), an MLflow tracking server "
        "(SQLite store, local artifacts) and a Prefect process worker; register the deployments "
        "so they appear in the UI; print the URLs and the variables to export. Services already "
        "running are left alone.",
    )
    up.add_argument("--prefect-port", type=int, help="Prefect server port (default: 4200)")
    up.add_argument("--mlflow-port", type=int, help="MLflow server port (default: 5000)")
    up.add_argument("--work-pool", metavar="POOL", help="process work pool (default: lmforge)")
    up.add_argument(
        "--working-dir", default=".", metavar="DIR",
        help="directory the worker runs flows in (default: the current directory)",
    )
    up.add_argument("--no-worker", action="store_true", help="start only the two servers")
    up.set_defaults(handler=run_up)
    down = commands.add_parser("down", help="stop the services `lmforge up` started")
    down.set_defaults(handler=run_down)
    status = commands.add_parser("status", help="show which local services run and answer")
    status.set_defaults(handler=run_status)
    for parser in (up, down, status):
        parser.add_argument("--state-dir", default="work/services", metavar="DIR", help=state_help)


TRACKING_URI_HELP = "MLflow store (default: MLFLOW_TRACKING_URI, else work/pipeline/mlflow.db)"
CHECKPOINT_HELP = "a training output directory or one of its checkpoints/step-NNNNNN directories"
TOKENIZER_HELP = "tokenizer.json to use (default: the checkpoint's own, else its training run's)"


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def check_inputs(
    patterns: Sequence[str], crawl: str | None = None, max_files: int | None = None
) -> None:
    """Fail before a flow run starts when a local input matches nothing or the crawl id is
    malformed (the flow checks too). Remote files are not fetched here: the run reports them."""
    from lmforge.tasks.data.inputs import crawl_listing_url, is_remote, resolve_inputs

    if max_files is not None and crawl is None:
        raise ValueError("--max-files limits a Common Crawl crawl: give --crawl CC-MAIN-YYYY-WW")
    if crawl is not None:
        crawl_listing_url(crawl)
    local = [pattern for pattern in patterns if not is_remote(pattern)]
    if local:
        resolve_inputs(local)


@contextlib.contextmanager
def warc_progress_bar() -> Iterator[None]:
    """A bar over finished WARC files on stderr while the data stage runs, shown only when
    stderr is a terminal; log records go through the bar meanwhile, so lines never interleave."""
    if not sys.stderr.isatty():
        yield
        return
    import logging

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from lmforge.flows.data_refresh import file_progress

    bars: list[tqdm] = []

    def advance(done: int, total: int, name: str) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="file", desc="WARC files", file=sys.stderr))
        bars[0].set_postfix_str(name, refresh=False)
        bars[0].update(done - bars[0].n)

    try:
        with logging_redirect_tqdm([logging.getLogger()]), file_progress(advance):
            yield
    finally:
        for bar in bars:
            bar.close()


def stage_configs(args: argparse.Namespace) -> dict[str, BaseModel]:
    """The parsed stage command's config sections: defaults <- --config recipe <- flags."""
    stage: Stage = args.stage
    recipe_path = getattr(args, "config", None)
    recipe = load_recipe(recipe_path) if recipe_path else None
    return resolve_sections(
        args,
        stage.sections(),
        recipe,
        recipe_name=str(recipe_path),
        other_sections=sections_of_every_stage,
    )


def sections_of_every_stage() -> dict[str, list[type[BaseModel]]]:
    """Section name -> the models it has in the stages (a pipeline recipe configures a stage)."""
    found: dict[str, list[type[BaseModel]]] = {}
    for stage in STAGES:
        for name, model in stage.sections().items():
            found.setdefault(name, []).append(model)
    return found


def setting(configs: Mapping[str, BaseModel], name: str, default: Any = None) -> Any:
    """The top-level field `name` of the first section that has one (`input`, `crawl`)."""
    for config in configs.values():
        if name in type(config).model_fields:
            return getattr(config, name)
    return default


def check_warc_inputs(stage: Stage, configs: Mapping[str, BaseModel]) -> None:
    inputs = setting(configs, "input") or []
    crawl, max_files = setting(configs, "crawl"), setting(configs, "max_files")
    if stage.name == "data_refresh" and not inputs and crawl is None:
        raise ValueError("nothing to read: give --input FILES/URLS or --crawl CC-MAIN-YYYY-WW")
    check_inputs(inputs, crawl, max_files)


def start_flow(stage: Stage, configs: Mapping[str, BaseModel]) -> Any:
    """Run the stage's flow with the sections its parameters name, against the command's
    Prefect API (the configured server, else one this process serves: `command_prefect_api`)."""
    from lmforge.servers import command_prefect_api

    flow = stage.flow()
    quiet_console_when_stopping()  # Prefect's console handlers exist once a flow is defined
    with command_prefect_api(float(os.environ.get(STARTUP_TIMEOUT_VARIABLE, "600"))):
        return call_with_sections(flow, configs)


def run_stage(args: argparse.Namespace) -> int:
    """Resolve the stage's config, check its inputs, run its flow, print what it made."""
    stage: Stage = args.stage
    configs = stage_configs(args)
    reads_warc = "warc" in stage.inputs
    if reads_warc:
        check_warc_inputs(stage, configs)
    check = stage.check()
    if check is not None:
        call_with_sections(check, configs)
    with warc_progress_bar() if reads_warc else contextlib.nullcontext():
        result = start_flow(stage, configs)
    STAGE_REPORTS.get(stage.name, print_json)(result)
    return 0


def report_pipeline(summary: dict) -> None:
    print_json(summary)
    print(
        f"\nOutputs are in {summary['work_dir']}: data/, shards/, train/ (the checkpoint), "
        f"eval/results.json.\nMLflow runs: {summary['mlflow_tracking_uri']} — browse them "
        f"with\n  mlflow ui --backend-store-uri {summary['mlflow_tracking_uri']}"
    )


# What a stage command prints of its flow's result (the whole result when not listed).
STAGE_REPORTS: dict[str, Callable[[Any], None]] = {
    "pipeline": report_pipeline,
    "data_refresh": lambda manifest: print_json(manifest["counts"]),
    "build_shards": lambda manifest: print_json(
        {"tokenizer": manifest["tokenizer"], "splits": manifest["splits"]}
    ),
    "evaluate": lambda results: print_json({k: v for k, v in results.items() if k != "samples"}),
}


def run_reproduce(args: argparse.Namespace) -> int:
    """Download the run's config.yaml and run its recorded command with it (flags override)."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from lmforge.lineage import use_tracking_uri

    overrides, tracking_uri = without_option(args.overrides, "--tracking-uri")
    from lmforge.flows.tracking_store import sqlite_path

    uri = use_tracking_uri(args.tracking_uri or tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # MLflow would create an empty store and find nothing
        raise ConfigError(f"no MLflow store at {db}: check --tracking-uri (or MLFLOW_TRACKING_URI)")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the new run is recorded beside the original
    with tempfile.TemporaryDirectory(prefix="lmforge-reproduce-") as folder:
        try:
            run = mlflow.get_run(args.run_id)
            path = mlflow.artifacts.download_artifacts(
                run_id=args.run_id, artifact_path=CONFIG_FILE, dst_path=folder
            )
        except (MlflowException, OSError) as error:
            raise ConfigError(
                f"run {args.run_id} in {uri} has no {CONFIG_FILE} to reproduce "
                f"({one_line(error, 120)}): check the run id and --tracking-uri"
            ) from None
        metadata, _ = read_config_file(path)
        command = metadata.get("command") or recorded_command(run.data.tags.get(STAGE_TAG))
        if command is None:
            raise ConfigError(
                f"run {args.run_id} is not a stage run (its {CONFIG_FILE} names no command and "
                "its lmforge.stage tag no stage): reproduce a stage's or a pipeline's run"
            )
        if metadata.get("lmforge_version") != __version__:
            print(
                f"note: run {args.run_id} was made by lmforge {metadata.get('lmforge_version')}, "
                f"this is {__version__}",
                file=sys.stderr,
            )
        words = [*command.split(), "--config", path, *overrides]
        print(f"reproducing run {args.run_id}: lmforge {' '.join(words)}", file=sys.stderr)
        stage_args = build_parser(lazy=True).parse_args(words)
        return stage_args.handler(stage_args)


def run_build_sample(args: argparse.Namespace) -> int:
    from lmforge.tasks.data.sample.corpus import build_sample_corpus

    for path in build_sample_corpus(Path(args.out)):
        print(path)
    return 0


def recorded_command(stage_name: str | None) -> str | None:
    """The command of the stage a run's `lmforge.stage` tag names (None for no stage)."""
    return next((stage.command for stage in STAGES if stage.name == stage_name), None)


def without_option(words: Sequence[str], option: str) -> tuple[list[str], str | None]:
    """`words` without `option VALUE` (or `option=VALUE`), and that value."""
    kept, value, rest = [], None, iter(words)
    for word in rest:
        if word == option:
            value = next(rest, None)
        elif word.startswith(option + "="):
            value = word.split("=", 1)[1]
        else:
            kept.append(word)
    return kept, value


def run_lineage(args: argparse.Namespace) -> int:
    from lmforge.lineage import build_lineage, format_lineage, use_tracking_uri

    use_tracking_uri(args.tracking_uri)
    lineage = build_lineage(args.model)
    if args.json:
        print_json(lineage)
    else:
        print(format_lineage(lineage))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from lmforge.flows.promotion import promote
    from lmforge.lineage import use_tracking_uri

    use_tracking_uri(args.tracking_uri)
    print(promote(args.model, args.version, args.reason).reason)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from lmforge.flows.promotion import rollback
    from lmforge.lineage import use_tracking_uri

    use_tracking_uri(args.tracking_uri)
    print(rollback(args.model).reason)
    return 0


def run_export_hf(args: argparse.Namespace) -> int:
    from lmforge.tasks.export_hf import export_hf

    out = export_hf(args.checkpoint, args.out, tokenizer=args.tokenizer)
    print(f"Wrote a Hugging Face Llama model to {out}; load it with")
    print(f"  transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from lmforge.model.checkpoint import check_model_dir, load_model
    from lmforge.model.runtime import resolve_device
    from lmforge.tasks.generate import checkpoint_tokenizer_file, stream_generate
    from lmforge.tasks.tokens.tokenizer import load_tokenizer

    device = resolve_device(args.device or "auto")
    check_model_dir(args.checkpoint)  # before the tokenizer: a wrong folder is the likelier slip
    tokenizer = load_tokenizer(checkpoint_tokenizer_file(args.checkpoint, args.tokenizer))
    model = load_model(args.checkpoint, device=device)
    pieces = stream_generate(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    print(args.prompt, end="", flush=True)
    for piece in pieces:
        print(piece, end="", flush=True)
    print()
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL

    from lmforge.flows.deployments import check_schedule, register_deployments

    check_schedule(args.cron, args.timezone)
    if not PREFECT_API_URL.value():
        # Deployments registered on a throwaway ephemeral server would vanish with this process.
        raise ValueError(
            "no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) to the "
            "server the UI and the workers use"
        )
    ids = register_deployments(
        args.work_pool,
        schedule_cron=args.cron,
        schedule_active=args.schedule_active,
        timezone=args.timezone,
        working_dir=args.working_dir,
        dataset=args.dataset,
        refresh_source=refresh_source(args),
    )
    state = "active" if args.schedule_active else "paused"
    print(f"Registered {len(ids)} deployments on work pool {args.work_pool!r} "
          f"(data_refresh schedule {args.cron!r} {args.timezone}, {state}).")
    print(f"Start a worker:  prefect worker start --pool {args.work_pool}")
    print("Trigger a run:   the Run button in the Prefect UI, or "
          "prefect deployment run pipeline/lmforge-run")
    return 0


def run_clean(args: argparse.Namespace) -> int:
    import shutil

    from lmforge.flows.stage_outputs import STAGES_DIR, removable_folders

    work_dir = Path(args.work_dir)
    if not (work_dir / STAGES_DIR).is_dir():
        raise ValueError(
            f"{work_dir} has no {STAGES_DIR}/ folder: not a pipeline's or a retrain's work dir"
        )
    folders = removable_folders(work_dir, args.keep)
    total = 0
    for folder in folders:
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        total += size
        print(f"{'deleting' if args.yes else 'would delete'}  {folder}  ({size / 1e6:,.1f} MB)")
        if args.yes:
            shutil.rmtree(folder)
    verb = "deleted" if args.yes else "would free"
    print(f"{len(folders)} folders, {total / 1e6:,.1f} MB {verb}" +
          ("" if args.yes or not folders else "; run again with --yes to delete them"))
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def refresh_source(args: argparse.Namespace) -> dict[str, Any]:
    """The data_refresh deployment's source fields from `lmforge deploy`'s flags."""
    source = {
        "input": args.refresh_input,
        "crawl": args.refresh_crawl,
        "files_per_run": args.files_per_run,
        "crawl_base_url": args.crawl_base_url,
    }
    return {key: value for key, value in source.items() if value is not None}


def register_flows(config: ServiceConfig) -> None:
    """Create the work pool and (re)register the deployments on the Prefect server `config`
    names: what `lmforge up` does once its servers answer."""
    from lmforge.flows.deployments import register_deployments
    from lmforge.servers import prefect_client_settings

    with prefect_client_settings(config):
        register_deployments(
            config.work_pool,
            working_dir=config.working_dir,
            parameters=dict(config.deployment_parameters),
        )


def run_up(args: argparse.Namespace) -> int:
    from lmforge.servers import load_config, shell_exports, start_services

    config = load_config(
        args.state_dir, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port,
        work_pool=args.work_pool, working_dir=Path(args.working_dir),
        start_worker=not args.no_worker,
    )
    start_services(config, register_flows)
    print(f"\nPrefect UI:  {config.prefect_url}\nMLflow UI:   {config.mlflow_url}")
    print("\nSend flows to them (or `source " + str(config.state_dir / "env") + "`):")
    for line in shell_exports(config):
        print(f"  {line}")
    print("Stop them:   lmforge down" + ("" if args.state_dir == "work/services"
                                        else f" --state-dir {args.state_dir}"))
    return 0


def run_down(args: argparse.Namespace) -> int:
    from lmforge.servers import load_config, stop_services

    stopped = stop_services(load_config(args.state_dir))
    print(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing was running.")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from lmforge.servers import load_config, service_status

    status = service_status(load_config(args.state_dir))
    for name, state in status.items():
        word = "healthy" if state["healthy"] else "running" if state["running"] else "stopped"
        pid = f"pid {state['pid']}" if state["pid"] else ""
        print(f"{name:15} {word:8} {state['url']:28} {pid}")
    return 0 if all(state["healthy"] for state in status.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. An error the user can act on (see
    `user_message`) is printed as one line `lmforge COMMAND: error: ...` with exit code 2;
    anything else is a bug and keeps its traceback, as every error does with --debug. SIGINT
    or SIGTERM stops the command (`lmforge.stopping`): its MLflow runs end as KILLED, one line
    `lmforge COMMAND: stopped by SIG...` says what was kept, exit code 130 or 143."""
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    parser = build_parser(lazy=True)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    invocation = uuid.uuid4().hex
    with stop_handlers(), tagged_mlflow_runs(invocation):
        try:
            return handler(args)
        except BaseException as error:
            stop = as_stop(error)
            if stop is None:
                if not isinstance(error, Exception):
                    raise
                message = user_message(error, getattr(args, "option_flags", {}))
                debug = args.debug or os.environ.get("LMFORGE_DEBUG", "") not in ("", "0")
                if message is None or debug:
                    raise
                print(f"lmforge {command_words(args)}: error: {message}", file=sys.stderr)
                print("(run it again with --debug for the full traceback)", file=sys.stderr)
                return 2
            with ignoring_stop_signals():
                end_runs_as_killed(invocation)
                words = sys.argv[1:] if argv is None else list(argv)
                print(f"lmforge {command_words(args)}: {stop_message(args, words, stop)}",
                      file=sys.stderr, flush=True)  # fmt: skip
                if argv is None:  # the program itself, not a caller in Python: leave at once
                    exit_now(stop.exit_code)
            return stop.exit_code


def as_stop(error: BaseException) -> Stopped | None:
    """The stop an error stands for, None for anything else: a `Stopped` (preferably the one
    naming a checkpoint, anywhere in the error's chain), a KeyboardInterrupt (Ctrl-C before the
    handlers were in place), the TerminationSignal Prefect raises for SIGTERM during a flow, or
    any error once a stop signal arrived (libraries turn an interrupt into errors of their
    own: pydantic's serializer reports it as a PydanticSerializationError)."""
    chain, seen = [], error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    stops = [item for item in chain if isinstance(item, Stopped)]
    if stops:
        return next((stop for stop in stops if stop.checkpoint is not None), stops[0])
    if stop_signal() is not None:
        return Stopped(stop_signal())
    if isinstance(error, KeyboardInterrupt):
        return Stopped(signal.SIGINT)
    if type(error).__name__ == "TerminationSignal":  # prefect.exceptions, not imported for this
        return Stopped(getattr(error, "signal", signal.SIGTERM))
    return None


# What to run again after a stop that kept no checkpoint, by stage (default: NOTHING_KEPT).
NOTHING_KEPT = "nothing was kept; run the same command again"
RESUME_HINTS = {
    "pipeline": "run the same command again to continue: finished stages and files are reused",
    "data_refresh": "run the same command again to continue: files already processed are reused",
}


RESUME_FLAGS = ("--resume", "--no-resume", "--train.resume", "--no-train.resume")


def stop_message(args: argparse.Namespace, words: Sequence[str], stop: Stopped) -> str:
    """`stopped by SIGTERM at step 120; checkpoint kept in DIR; resume with `lmforge ...``:
    the signal, what was kept, and the command that continues from it."""
    text = f"stopped by {signal_name(stop.signum)}"
    stage: Stage | None = getattr(args, "stage", None)
    if stop.checkpoint is None:
        return f"{text}; {RESUME_HINTS.get(stage.name, NOTHING_KEPT) if stage else NOTHING_KEPT}"
    again = list(words)
    if stage is not None and stage.name == "pretrain":
        again = [word for word in again if word not in RESUME_FLAGS] + ["--resume"]
    return (
        f"{text} at step {stop.step}; checkpoint kept in {stop.checkpoint}; resume with "
        f"`{shlex.join(['lmforge', *again])}`"
    )


def command_words(args: argparse.Namespace) -> str:
    """`train`, `data refresh`, `export hf`: the command as the user typed it."""
    second = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {second}" if second else args.command


def user_message(error: BaseException, option_flags: dict[str, str]) -> str | None:
    """The one line to print for an error a user can act on; None for a bug.

    Ours name the thing and what to do (LmforgeError, and the ValueError / FileNotFoundError of
    older checks); so do the OS's errors about a file. Errors from the services underneath are
    translated here: invalid options (pydantic), an MLflow store that cannot be opened. (The
    command's own Prefect API raises a ServiceError, an LmforgeError, when it cannot start.)
    """
    if isinstance(error, ValidationError):
        return options_message(error, option_flags)
    if isinstance(error, (LmforgeError, ValueError)):
        return one_line(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror.lower()}"
    if isinstance(error, FileNotFoundError):
        return one_line(error)
    if is_store_error(error):
        return store_message(error)
    return None


def options_message(error: ValidationError, option_flags: dict[str, str]) -> str:
    """`--max-steps: Input should be greater than or equal to 1 (got 0)`, one per problem."""
    problems = []
    for problem in error.errors():
        location = problem["loc"]
        name = option_flags.get(location[0], location[0]) if location else error.title
        where = " ".join(str(part) for part in (name, *location[1:]))
        got = one_line(repr(problem.get("input")), 60)
        problems.append(f"{where}: {problem['msg']} (got {got})")
    return "; ".join(problems)


def is_store_error(error: BaseException) -> bool:
    """A SQLite (or other SQL) database error: of an MLflow store when it reaches this far."""
    import sqlite3

    sql = sys.modules.get("sqlalchemy.exc")  # None unless imported, so only then can it raise
    return isinstance(error, sqlite3.DatabaseError) or (
        sql is not None and isinstance(error, sql.DatabaseError)
    )


def store_message(error: BaseException) -> str:
    mlflow = sys.modules.get("mlflow")
    store = mlflow.get_tracking_uri() if mlflow is not None else "the tracking store"
    reason = one_line(getattr(error, "orig", None) or error, 120)
    if "locked" in reason:
        advice = "another process is writing it; run this again when that one has finished"
    else:
        advice = (
            "point MLFLOW_TRACKING_URI (lineage: --tracking-uri) at an MLflow store, or move "
            "this file away to start a new one"
        )
    return f"the MLflow store {store} cannot be used ({reason}): {advice}"


if __name__ == "__main__":
    sys.exit(main())
