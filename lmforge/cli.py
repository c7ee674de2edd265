"""The `lmforge` command line: a verb per workflow, each a thin layer over the Prefect flows.

Options are generated from the flows' pydantic parameter models, so the CLI, the Prefect UI form
and the Python API share one set of names, defaults and descriptions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lmforge import __version__
from lmforge.errors import LmforgeError, one_line

# Offline by default: no telemetry calls from Prefect or MLflow (there may be no network at all).
QUIET_ENVIRONMENT = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def add_model_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    renames: dict[str, str] | None = None,
    skip: Sequence[str] = (),
    required: Sequence[str] = (),
) -> None:
    """One `--option` per field of `model`, typed and documented from the field itself."""
    renames = renames or {}
    flags = {name: "--" + renames.get(name, name).replace("_", "-") for name in model.model_fields}
    parser.set_defaults(option_flags=flags)  # error messages name a field by its option
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = flags[name]
        annotation = field.annotation
        default = field.get_default(call_default_factory=True)
        help_text = (field.description or "").replace("%", "%%")  # argparse %-formats help
        kwargs: dict[str, Any] = {"dest": name, "help": help_text, "default": argparse.SUPPRESS}
        if name in required:
            kwargs["required"] = True
        elif default not in (None, [], "", False):
            kwargs["help"] = f"{help_text} (default: {default})"
        inner, is_list = _unwrap(annotation)
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if is_list:
                kwargs["nargs"] = "+"
            if typing.get_origin(inner) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(inner))
            elif inner in (int, float):
                kwargs["type"] = inner
            if not kwargs.get("choices"):
                kwargs["metavar"] = flag[2:].replace("-", "_").upper()
        parser.add_argument(flag, **kwargs)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """`list[str] | None` -> (str, True); `int | None` -> (int, False)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def params_from(args: argparse.Namespace, model: type[BaseModel], **extra: Any) -> BaseModel:
    values = {k: v for k, v in vars(args).items() if k in model.model_fields}
    return model(**values, **extra)


def build_parser() -> argparse.ArgumentParser:
    from lmforge.flows.params import (
        DataRefreshParams,
        EvalParams,
        FinetuneClassifierParams,
        FinetuneInstructParams,
        PipelineParams,
        ShardParams,
        TrainParams,
    )

    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Build a language model from raw web archives: filter, dedup, tokenize, "
        "pretrain, evaluate — every run tracked in MLflow, every stage a Prefect flow.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="the whole pipeline: data refresh, shards, pretraining, evaluation",
        description="Run the whole pipeline. With no --input it builds an offline sample of WARC "
        "files from the Python interpreter's own documentation.",
    )
    add_model_options(run, PipelineParams)
    run.set_defaults(handler=run_pipeline)

    data = commands.add_parser("data", help="data stage commands").add_subparsers(
        dest="data_command", metavar="COMMAND", required=True
    )
    refresh = data.add_parser(
        "refresh",
        help="WARC files -> filtered, deduplicated Parquet dataset",
        description="Read WARC responses, extract main text, identify languages, apply quality "
        "filters, remove exact and near duplicates, write docs/ and removed/ as Parquet.",
    )
    add_model_options(refresh, DataRefreshParams)
    refresh.set_defaults(handler=run_data_refresh)

    sample = data.add_parser(
        "sample", help="write the built-in offline sample WARC files (Python docs + crawl noise)"
    )
    sample.add_argument("--out", required=True, metavar="DIR", help="directory for the WARC files")
    sample.set_defaults(handler=run_build_sample)

    shards = commands.add_parser("shards", help="tokenizer and token shards").add_subparsers(
        dest="shards_command", metavar="COMMAND", required=True
    )
    build = shards.add_parser(
        "build",
        help="train a byte-level BPE tokenizer and write Arrow token shards",
        description="Train a byte-level BPE tokenizer on a dataset and write train/val token "
        "shards as Arrow IPC files with a manifest.",
    )
    add_model_options(build, ShardParams)
    build.set_defaults(handler=run_build_shards)

    train = commands.add_parser(
        "train",
        help="pretrain the transformer on token shards",
        description="Pretrain a decoder-only transformer on token shards, with resumable "
        "checkpoints in --out.",
    )
    add_model_options(train, TrainParams)
    train.set_defaults(handler=run_pretrain)

    evaluate = commands.add_parser(
        "eval",
        help="validation loss, bits per byte, BLiMP and samples of a checkpoint",
        description="Evaluate a checkpoint: validation loss, perplexity, bits per byte; BLiMP "
        "minimal-pair accuracy with --blimp; a few sampled generations.",
    )
    add_model_options(
        evaluate, EvalParams, renames={"out": "eval-dir", "results_json": "out"}
    )
    evaluate.set_defaults(handler=run_evaluate)

    finetune = commands.add_parser(
        "finetune", help="fine-tune a pretrained model: classification, instruction following"
    ).add_subparsers(dest="finetune_command", metavar="COMMAND", required=True)
    classify = finetune.add_parser(
        "classify",
        help="text classifier from a pretrained model (labels from a file or from URLs)",
        description="Add a classification head on the last token of a pretrained model and "
        "fine-tune it on a labelled CSV/JSONL file (text, label) or on a data-stage directory "
        "labelled by URL section or site; reports held-out accuracy and macro-F1 against the "
        "majority-class baseline and registers the classifier in MLflow.",
    )
    add_model_options(classify, FinetuneClassifierParams)
    classify.set_defaults(handler=run_finetune_classifier)
    instruct = finetune.add_parser(
        "instruct",
        help="supervised instruction fine-tuning (full or LoRA) on Alpaca/chat JSONL",
        description="Fine-tune a pretrained model on instruction records (Alpaca-style "
        "instruction/input/output, or chat messages) with loss on response tokens only; "
        "--lora-rank N trains LoRA adapters and merges them. Generates responses to held-out "
        "prompts and registers the model in MLflow.",
    )
    add_model_options(instruct, FinetuneInstructParams, required=("data",))
    instruct.set_defaults(handler=run_finetune_instruct)

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
    lineage.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store (default: MLFLOW_TRACKING_URI, else work/pipeline/mlflow.db)",
    )
    lineage.set_defaults(handler=run_lineage)

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
        description="Register pipeline, data_refresh, build_shards, pretrain and evaluate as "
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
    deploy.set_defaults(handler=run_deploy)
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


def run_pipeline(args: argparse.Namespace) -> int:
    from lmforge.flows.params import PipelineParams
    from lmforge.flows.pipeline import pipeline
    from lmforge.preflight import check_pipeline_inputs

    params = params_from(args, PipelineParams)
    check_inputs(params.input)
    check_pipeline_inputs(params)
    with warc_progress_bar():
        summary = pipeline(params)
    print_json(summary)
    work = summary["work_dir"]
    print(
        f"\nOutputs are in {work}: data/, shards/, train/ (the checkpoint), eval/results.json."
        f"\nMLflow runs: {summary['mlflow_tracking_uri']} — browse them with\n"
        f"  mlflow ui --backend-store-uri {summary['mlflow_tracking_uri']}"
    )
    return 0


def run_data_refresh(args: argparse.Namespace) -> int:
    from lmforge.flows.data_refresh import data_refresh
    from lmforge.flows.params import DataRefreshParams

    params = params_from(args, DataRefreshParams)
    if not params.input and params.crawl is None:
        raise ValueError("nothing to read: give --input FILES/URLS or --crawl CC-MAIN-YYYY-WW")
    check_inputs(params.input, params.crawl, params.max_files)
    with warc_progress_bar():
        manifest = data_refresh(params)
    print_json(manifest["counts"])
    return 0


def run_build_sample(args: argparse.Namespace) -> int:
    from lmforge.tasks.data.sample.corpus import build_sample_corpus

    for path in build_sample_corpus(Path(args.out)):
        print(path)
    return 0


def run_build_shards(args: argparse.Namespace) -> int:
    from lmforge.flows.build_shards import build_shards
    from lmforge.flows.params import ShardParams
    from lmforge.preflight import check_shard_inputs

    params = params_from(args, ShardParams)
    check_shard_inputs(params)
    manifest = build_shards(params)
    print_json({"tokenizer": manifest["tokenizer"], "splits": manifest["splits"]})
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    from lmforge.flows.params import TrainParams
    from lmforge.flows.pretrain import pretrain
    from lmforge.preflight import check_train_inputs

    params = params_from(args, TrainParams)
    check_train_inputs(params)
    print_json(pretrain(params))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from lmforge.flows.evaluate import evaluate
    from lmforge.flows.params import EvalParams
    from lmforge.preflight import check_eval_inputs

    params = params_from(args, EvalParams)
    check_eval_inputs(params)
    results = evaluate(params)
    print_json({k: v for k, v in results.items() if k != "samples"})
    return 0


def run_finetune_classifier(args: argparse.Namespace) -> int:
    from lmforge.flows.finetune import finetune_classifier
    from lmforge.flows.params import FinetuneClassifierParams
    from lmforge.preflight import check_classifier_inputs

    params = params_from(args, FinetuneClassifierParams)
    check_classifier_inputs(params)
    print_json(finetune_classifier(params))
    return 0


def run_finetune_instruct(args: argparse.Namespace) -> int:
    from lmforge.flows.finetune import finetune_instruct
    from lmforge.flows.params import FinetuneInstructParams
    from lmforge.preflight import check_instruct_inputs

    params = params_from(args, FinetuneInstructParams)
    check_instruct_inputs(params)
    print_json(finetune_instruct(params))
    return 0


def run_lineage(args: argparse.Namespace) -> int:
    from lmforge.lineage import build_lineage, format_lineage, use_tracking_uri

    use_tracking_uri(args.tracking_uri)
    lineage = build_lineage(args.model)
    if args.json:
        print_json(lineage)
    else:
        print(format_lineage(lineage))
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
    )
    state = "active" if args.schedule_active else "paused"
    print(f"Registered {len(ids)} deployments on work pool {args.work_pool!r} "
          f"(data_refresh schedule {args.cron!r} {args.timezone}, {state}).")
    print(f"Start a worker:  prefect worker start --pool {args.work_pool}")
    print("Trigger a run:   the Run button in the Prefect UI, or "
          "prefect deployment run pipeline/lmforge")
    return 0


def run_up(args: argparse.Namespace) -> int:
    from lmforge.servers import load_config, shell_exports, start_services

    config = load_config(
        args.state_dir, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port,
        work_pool=args.work_pool, working_dir=Path(args.working_dir),
        start_worker=not args.no_worker,
    )
    start_services(config)
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
    anything else is a bug and keeps its traceback, as every error does with --debug."""
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except Exception as error:
        message = user_message(error, getattr(args, "option_flags", {}))
        if message is None or args.debug or os.environ.get("LMFORGE_DEBUG", "") not in ("", "0"):
            raise
        print(f"lmforge {command_words(args)}: error: {message}", file=sys.stderr)
        print("(run it again with --debug for the full traceback)", file=sys.stderr)
        return 2


def command_words(args: argparse.Namespace) -> str:
    """`train`, `data refresh`, `export hf`: the command as the user typed it."""
    words = [args.command]
    for level in ("data_command", "shards_command", "finetune_command", "export_command"):
        words += [getattr(args, level)] if getattr(args, level, None) else []
    return " ".join(words)


def user_message(error: BaseException, option_flags: dict[str, str]) -> str | None:
    """The one line to print for an error a user can act on; None for a bug.

    Ours name the thing and what to do (LmforgeError, and the ValueError / FileNotFoundError of
    older checks); so do the OS's errors about a file. Errors from the services underneath are
    translated here: invalid options (pydantic), a temporary Prefect server that never started,
    an MLflow store that cannot be opened.
    """
    if isinstance(error, ValidationError):
        return options_message(error, option_flags)
    if isinstance(error, (LmforgeError, ValueError)):
        return one_line(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror.lower()}"
    if isinstance(error, FileNotFoundError):
        return one_line(error)
    if isinstance(error, RuntimeError) and str(error).startswith(PREFECT_STARTUP_TIMEOUT):
        return prefect_startup_message(error)
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


# Prefect's message when the server it starts for a command run without PREFECT_API_URL is
# not answering by PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.
PREFECT_STARTUP_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def prefect_startup_message(error: RuntimeError) -> str:
    timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "?")
    exited = " (it exited)" if "exited with code" in str(error) else ""
    return (
        f"the temporary Prefect server this command starts did not answer within {timeout} s"
        f"{exited}: start a lasting one with `lmforge up` and export the PREFECT_API_URL it "
        "prints, or allow more time with PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    )


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
