"""The command line: a command per stage of the registry, its flags from the flow's config
sections; bad input gets a clear error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from lmforge.cli import build_parser, main, stage_configs
from lmforge.flows.stages import STAGES, stage_named
from lmforge.recipes import config_fields


def test_help_lists_a_verb_per_workflow():
    result = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "--help"], capture_output=True, text=True, check=True
    )
    for verb in ("run", "data", "shards", "train", "eval", "finetune", "reproduce"):
        assert re.search(rf"\n    {verb}\s", result.stdout), verb


def test_every_stage_of_the_registry_is_a_command():
    parser = build_parser()
    for stage in STAGES:
        args = parser.parse_args([*stage.command.split(), "--help"][:-1])
        assert args.stage is stage


@pytest.mark.parametrize("command", [stage.command for stage in STAGES])
def test_every_config_field_is_a_dotted_flag_with_its_description(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    stage = next(stage for stage in STAGES if stage.command == command)
    for section, model in stage.sections().items():
        assert f"{section}: " in help_text  # a group per section
        for field in config_fields(section, model):
            assert f"--{field.dotted}" in help_text
            assert " ".join((field.info.description or "").split()) in help_text


def test_flags_are_typed_and_validated_by_the_config_models():
    args = build_parser().parse_args(
        ["train", "--train.max-steps", "7", "--model.preset", "small", "--resume"]
    )
    configs = stage_configs(args)
    assert configs["train"].max_steps == 7
    assert configs["model"].preset == "small"
    assert configs["train"].resume is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model.preset", "huge"])


def test_bare_flags_of_before_the_sections_still_work():
    args = build_parser().parse_args(["train", "--max-steps", "7", "--out", "o", "--shards", "s"])
    configs = stage_configs(args)
    assert (configs["train"].max_steps, configs["run"].out, configs["run"].shards) == (7, "o", "s")
    assert stage_named("pretrain").command == "train"


def test_data_refresh_without_input_or_crawl_says_what_to_give(capsys):
    assert main(["data", "refresh", "--out", "x"]) == 2
    assert "give --input FILES/URLS or --crawl" in capsys.readouterr().err


def lmforge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge.cli", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture
def cli_env(prefect_api, tmp_path):
    """The CLI as a user runs it: a separate process, against the test's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }


def test_input_matching_nothing_is_a_clear_error(cli_env, tmp_path):
    pattern = str(tmp_path / "nothing-*.warc.gz")
    result = lmforge("data", "refresh", "--input", pattern, "--out", str(tmp_path / "d"), env=cli_env)
    assert result.returncode == 2
    assert pattern in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_invalid_parameter_value_is_reported_without_a_traceback(capsys):
    assert main(["train", "--max-steps", "0"]) == 2
    error, hint = capsys.readouterr().err.splitlines()
    assert error == (
        "lmforge train: error: --max-steps: Input should be greater than or equal to 1 (got 0)"
    )
    assert "--debug" in hint


def test_sample_then_data_refresh_writes_a_dataset(cli_env, tmp_path):
    assert lmforge("data", "sample", "--out", str(tmp_path / "warc"), env=cli_env).returncode == 0
    out = tmp_path / "data"
    result = lmforge(
        "data", "refresh", "--input", str(tmp_path / "warc" / "*.warc.gz"), "--out", str(out), env=cli_env
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["kept"] > 0
    assert json.loads(result.stdout)["kept"] == manifest["counts"]["kept"]
