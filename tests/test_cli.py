"""The command line: options come from the flows' parameter models; bad input gets a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmforge.cli import build_parser, main
from lmforge.flows.params import TrainParams


def test_help_lists_a_verb_per_workflow():
    result = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "--help"], capture_output=True, text=True, check=True
    )
    for verb in ("run", "data", "shards", "train", "eval"):
        assert f"    {verb} " in result.stdout


def test_every_training_parameter_is_an_option_with_its_description(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name, field in TrainParams.model_fields.items():
        assert f"--{name.replace('_', '-')}" in help_text
        assert " ".join(field.description.split()) in help_text


def test_options_are_typed_and_validated_by_the_parameter_model():
    args = build_parser().parse_args(["train", "--max-steps", "7", "--preset", "small", "--resume"])
    assert (args.max_steps, args.preset, args.resume) == (7, "small", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--preset", "huge"])


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
