"""Errors a user can act on reach them as one line, `lmforge COMMAND: error: ...`, naming the
file or folder and what to do, with exit code 2 and a hint that --debug shows the traceback;
--debug (or LMFORGE_DEBUG=1) re-raises instead, and anything unexpected keeps its traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shard_fixtures import write_shards_dir

from lmforge.cli import build_parser, main
from lmforge.manifest import build_manifest, stage_output, write_manifest
from lmforge.model.checkpoint import CheckpointError, save_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, train_tokenizer

torch.set_num_threads(1)

GARBAGE = b"\x89PNG\r\n\x1a\n\x00\xff\xfe not what was asked for \x81\x82"
TEXTS = ["the quick brown fox jumps over the lazy dog", "a tiny model says hello"] * 20


def write_training_output(directory: Path, tokenizer) -> Path:
    """A finished training output: weights, config, tokenizer and a `pretrain` manifest."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=2, d_model=16, max_seq_len=16
    )
    save_model(GPT(config), directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    write_manifest(directory, build_manifest(directory, "pretrain", {}, [], {}))
    return directory


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """A small valid input of every kind a command reads."""
    root = tmp_path_factory.mktemp("inputs")
    tokenizer = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1))
    paths = {"checkpoint": write_training_output(root / "train", tokenizer)}
    paths["tokenizer"] = root / "train" / "tokenizer.json"
    documents = [[(5 * i + j) % 60 + 2 for j in range(30)] for i in range(6)]
    paths["shards"] = write_shards_dir(root / "shards", documents, documents[:2], vocab_size=64)
    with stage_output(root / "data", "data_refresh", params={}):
        pass
    paths["data"] = root / "data"
    paths["blimp"] = root / "blimp"
    paths["blimp"].mkdir()
    pair = {"sentence_good": "Dogs bark.", "sentence_bad": "Dogs barks."}
    (paths["blimp"] / "agreement.jsonl").write_text(json.dumps(pair) + "\n")
    paths["benchmark"] = root / "hellaswag.jsonl"
    question = {"activity_label": "Cooking", "ctx_a": "She cracks an egg.", "ctx_b": "then",
                "endings": ["fries it.", "sings.", "flies.", "reads."], "label": 0}  # fmt: skip
    paths["benchmark"].write_text(json.dumps(question) + "\n")
    paths["labelled"] = root / "labelled.csv"
    paths["labelled"].write_text("text,label\ngood film,pos\nbad film,neg\n")
    paths["instructions"] = root / "instructions.jsonl"
    record = {"instruction": "Say hi.", "output": "Hi."}
    paths["instructions"].write_text(json.dumps(record) + "\n")
    paths["quality"] = root / "quality.jsonl"
    paths["quality"].write_text(json.dumps({"text": "A page of reference text."}) + "\n")
    return paths


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `lmforge ARGS`, run in this process."""
    capsys.readouterr()
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err.splitlines()


def assert_one_line_error(code: int, err: list[str], command: str, *named: object) -> str:
    """rc 2, the error line naming every one of `named`, and the --debug hint; returns the line."""
    assert code == 2, err
    assert len(err) == 2, err
    assert err[0].startswith(f"lmforge {command}: error: "), err
    for thing in named:
        assert str(thing) in err[0], err
    assert "--debug" in err[1]
    return err[0]


@pytest.fixture
def no_flow_runs(monkeypatch):
    """A flow that starts fails the test: input errors must be found before any flow runs."""

    def started(stage, configs):
        raise AssertionError(f"the {stage.name} flow started although an input was bad")

    monkeypatch.setattr("lmforge.cli.start_flow", started)


# --- every command, every input: missing, empty, garbage --------------------------------------

# (command words, the option naming the input, its kind, the other options the command needs)
INPUTS = [
    ("run", "--blimp", "blimp", ["--work-dir", "{tmp}/work"]),
    ("shards build", "--data", "data", ["--out", "{tmp}/out"]),
    ("shards build", "--tokenizer-path", "tokenizer", ["--data", "{data}", "--out", "{tmp}/out"]),
    ("train", "--shards", "shards", ["--out", "{tmp}/out"]),
    ("eval", "--checkpoint", "checkpoint", ["--shards", "{shards}"]),
    ("eval", "--shards", "shards", ["--checkpoint", "{checkpoint}"]),
    ("eval", "--data", "data", ["--checkpoint", "{checkpoint}", "--shards", "{shards}"]),
    ("eval", "--blimp", "blimp", ["--checkpoint", "{checkpoint}", "--shards", "{shards}"]),
    ("eval", "--tasks", "benchmark", ["--checkpoint", "{checkpoint}", "--shards", "{shards}"]),
    ("finetune classify", "--base-model", "checkpoint", ["--data", "{labelled}"]),
    ("finetune classify", "--data", "labelled", ["--base-model", "{checkpoint}"]),
    ("finetune instruct", "--base-model", "checkpoint", ["--data", "{instructions}"]),
    ("finetune instruct", "--data", "instructions", ["--base-model", "{checkpoint}"]),
    ("export hf", "--checkpoint", "checkpoint", ["--out", "{tmp}/hf"]),
    ("export hf", "--tokenizer", "tokenizer",
     ["--checkpoint", "{checkpoint}", "--out", "{tmp}/hf"]),
    ("generate", "--checkpoint", "checkpoint", ["--prompt", "x"]),
    ("generate", "--tokenizer", "tokenizer", ["--checkpoint", "{checkpoint}", "--prompt", "x"]),
    ("quality train", "--positive", "quality", ["--negative", "{quality}", "--out", "{tmp}/out"]),
    ("quality train", "--negative", "quality", ["--positive", "{quality}", "--out", "{tmp}/out"]),
    ("ablate", "--blimp", "blimp", ["--out", "{tmp}/out"]),
    ("ablate", "--heldout", "data", ["--out", "{tmp}/out"]),
    ("retrain", "--dataset", "data", ["--work-dir", "{tmp}/work"]),
    ("retrain", "--blimp", "blimp", ["--dataset", "{data}", "--work-dir", "{tmp}/work"]),
]
FOLDERS = {"checkpoint", "shards", "data", "blimp"}
# What a damaged folder of each kind holds: its files, with garbage in them.
GARBAGE_FILES = {
    "checkpoint": ["model.safetensors", "model_config.json", "tokenizer.json", "manifest.json"],
    "shards": ["manifest.json"],
    "data": ["manifest.json"],
    "blimp": ["agreement.jsonl"],
}
SUFFIXES = {"tokenizer": ".json", "benchmark": ".jsonl", "labelled": ".csv",
            "instructions": ".jsonl", "quality": ".jsonl"}  # fmt: skip
# Commands whose inputs are none of these kinds, and where theirs are tested.
OTHER_COMMANDS = {
    "data": "WARC files and lists: tests/test_inputs.py, tests/test_cli.py",
    "lineage": "a registered model's name; its MLflow store below",
    "reproduce": "a run id; its MLflow store below",
    "promote": "a registered model and version: tests/test_promotion.py",
    "rollback": "a registered model: tests/test_promotion.py",
    "clean": "a work dir: tests/test_retrain.py",
    "deploy": "no input files",
    "up": "no input files", "down": "no input files", "status": "no input files",
}  # fmt: skip


def bad_input(kind: str, variant: str, tmp: Path) -> Path:
    """A missing, empty or garbage input of `kind` under `tmp`."""
    path = tmp / f"bad-{kind}{'' if kind in FOLDERS else SUFFIXES[kind]}"
    if variant == "empty":
        path.mkdir() if kind in FOLDERS else path.write_bytes(b"")
    elif variant == "garbage" and kind in FOLDERS:
        path.mkdir()
        for name in GARBAGE_FILES[kind]:
            (path / name).write_bytes(GARBAGE)
    elif variant == "garbage":
        path.write_bytes(GARBAGE)
    return path


@pytest.mark.parametrize("variant", ["missing", "empty", "garbage"])
@pytest.mark.parametrize(
    "command, option, kind, others", INPUTS, ids=[f"{c}-{o[2:]}" for c, o, _, _ in INPUTS]
)
def test_a_missing_empty_or_garbage_input_is_one_line_naming_it(
    command, option, kind, others, variant, good, tmp_path, capsys, no_flow_runs
):
    bad = bad_input(kind, variant, tmp_path)
    value = f"hellaswag={bad}" if kind == "benchmark" else bad
    fill = {"tmp": tmp_path, **{name: str(path) for name, path in good.items()}}
    args = [*command.split(), option, value, *(other.format(**fill) for other in others)]
    code, err = run_cli(args, capsys)
    assert_one_line_error(code, err, command, bad)


def test_the_input_matrix_covers_every_command_of_the_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    tested = {command.split()[0] for command, *_ in INPUTS}
    assert tested | set(OTHER_COMMANDS) == set(commands)


# --- checkpoints -------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(good, tmp_path) -> Path:
    """A copy of the good training output that a test may damage."""
    copy = tmp_path / "checkpoint"
    copy.mkdir()
    for file in good["checkpoint"].iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    return copy


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--prompt", "x", "--checkpoint"],
        ["export", "hf", "--out", "{tmp}/hf", "--checkpoint"],
        ["eval", "--shards", "{shards}", "--checkpoint"],
    ],
    ids=["generate", "export", "eval"],
)
def test_a_truncated_weights_file_is_named_as_damaged(
    command, checkpoint, good, tmp_path, capsys, no_flow_runs
):
    truncate(checkpoint / "model.safetensors")
    args = [word.format(tmp=tmp_path, shards=good["shards"]) for word in command]
    code, err = run_cli([*args, checkpoint], capsys)
    words = " ".join(w for w in command[:2] if not w.startswith("-"))
    line = assert_one_line_error(code, err, words, checkpoint / "model.safetensors")
    assert "damaged or incomplete" in line and "another checkpoint" in line


def test_weights_that_do_not_fit_the_config_are_refused_naming_both(checkpoint, capsys):
    config = json.loads((checkpoint / "model_config.json").read_text())
    (checkpoint / "model_config.json").write_text(json.dumps({**config, "d_model": 32}))
    code, err = run_cli(["generate", "--checkpoint", checkpoint, "--prompt", "x"], capsys)
    line = assert_one_line_error(code, err, "generate", checkpoint / "model.safetensors")
    assert "model_config.json" in line


def test_an_invalid_model_config_is_named_with_what_is_wrong(checkpoint, capsys):
    (checkpoint / "model_config.json").write_text('{"vocab_size": 300, "n_heads": 2}')
    code, err = run_cli(["generate", "--checkpoint", checkpoint, "--prompt", "x"], capsys)
    line = assert_one_line_error(code, err, "generate", checkpoint / "model_config.json")
    assert "unknown ModelConfig field(s): n_heads" in line


def test_generate_on_a_missing_checkpoint_folder_says_it_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    code, err = run_cli(["generate", "--checkpoint", missing, "--prompt", "x"], capsys)
    line = assert_one_line_error(code, err, "generate", missing)
    assert "does not exist" in line and "--tokenizer" not in line


def test_invalid_utf8_in_fine_tuning_data_names_file_and_line(good, tmp_path, capsys):
    data = tmp_path / "instructions.jsonl"
    data.write_bytes(b'{"instruction": "Say hi.", "output": "Hi."}\n{"instruction": "caf\xe9"}\n')
    args = ["finetune", "instruct", "--base-model", good["checkpoint"], "--data", data]
    code, err = run_cli(args, capsys)
    line = assert_one_line_error(code, err, "finetune instruct", f"{data}:2")
    assert "not UTF-8" in line and "0xe9" in line


def test_a_fresh_train_into_a_folder_with_checkpoints_says_to_resume(good, tmp_path, capsys):
    out = tmp_path / "train"
    step = out / "checkpoints" / "step-000005"
    save_model(GPT(ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16)), step)
    torch.save({"step": 5}, step / "training_state.pt")
    code, err = run_cli(["train", "--shards", good["shards"], "--out", out], capsys)
    line = assert_one_line_error(code, err, "train", out, "step-000005")
    assert "--resume" in line


def test_train_refuses_a_folder_of_other_files(good, tmp_path, capsys):
    out = tmp_path / "my-documents"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, err = run_cli(["train", "--shards", good["shards"], "--out", out], capsys)
    line = assert_one_line_error(code, err, "train", out)
    assert "not an lmforge output" in line
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


@pytest.mark.slow
def test_a_failed_resume_through_the_flow_is_one_line_and_the_run_stays_finished(
    prefect_api, good, tmp_path, capsys, monkeypatch
):
    """An error raised inside a Prefect flow reaches the CLI as itself (Prefect re-raises)."""
    from lmforge.model.checkpoint import latest_checkpoint
    from lmforge.model.train import TrainConfig, TrainJob, train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr("lmforge.flows.tracking._configured_uri", None)
    out = tmp_path / "train"
    train(TrainJob(shards_dir=str(good["shards"]), out_dir=str(out), train=TrainConfig(
        max_steps=2, batch_size=2, seq_len=16, warmup_steps=0, checkpoint_every=1,
        device="cpu", progress=False)))  # fmt: skip
    manifest = (out / "manifest.json").read_bytes()
    state = latest_checkpoint(out) / "training_state.pt"
    state.write_bytes(state.read_bytes()[:100])

    args = ["train", "--shards", good["shards"], "--out", out, "--resume", "--max-steps", "2"]
    code, err = run_cli([*args, "--batch-size", "2", "--seq-len", "16", "--device", "cpu"], capsys)
    # Above ours, MLflow may report creating its store (Prefect logs the failed run itself).
    assert [line for line in err if line.startswith("lmforge")] == err[-2:-1]
    assert_one_line_error(code, err[-2:], "train", state, "damaged")
    assert (out / "manifest.json").read_bytes() == manifest


# --- services ----------------------------------------------------------------------------------


def test_an_mlflow_store_that_is_not_a_database_is_one_line_naming_it(tmp_path, capsys):
    store = tmp_path / "mlflow.db"
    store.write_bytes(GARBAGE * 100)
    code, err = run_cli(["lineage", "lmforge-tiny", "--tracking-uri", f"sqlite:///{store}"], capsys)
    line = assert_one_line_error(code, err, "lineage", store)
    assert "MLflow store" in line


@pytest.mark.slow
def test_a_temporary_prefect_server_that_does_not_start_is_one_line(good, tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    # No server to talk to, and no time for the temporary one to start.
    env.update(PREFECT_HOME=str(tmp_path / "prefect"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")  # fmt: skip
    args = ["train", "--shards", str(good["shards"]), "--out", str(tmp_path / "train")]
    result = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    # Prefect logs its own start and stop lines around ours.
    errors = [line for line in result.stderr.splitlines() if line.startswith("lmforge train:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("lmforge train: error: the temporary Prefect server")
    assert "lmforge up" in errors[0] and "PREFECT_API_URL" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("store", ["missing", "garbage", "without the run"])
def test_reproducing_from_a_bad_store_or_an_unknown_run_is_one_line(store, tmp_path, capsys):
    import mlflow

    db = tmp_path / "mlflow.db"
    if store == "garbage":
        db.write_bytes(GARBAGE * 100)
    elif store == "without the run":
        mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()  # creates the store
    code, err = run_cli(["reproduce", "0123abcd", "--tracking-uri", f"sqlite:///{db}"], capsys)
    named = {"missing": [db, "--tracking-uri"], "garbage": [db, "MLflow store"],
             "without the run": ["run 0123abcd", db, "--tracking-uri"]}[store]  # fmt: skip
    assert_one_line_error(code, err, "reproduce", *named)


# --- --debug and bugs --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_re_raises_the_error_for_its_traceback(where, tmp_path):
    command = ["generate", "--checkpoint", str(tmp_path / "missing"), "--prompt", "x"]
    args = ["--debug", *command] if where == "before" else [*command, "--debug"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(args)


def test_lmforge_debug_in_the_environment_re_raises_too(checkpoint, monkeypatch):
    truncate(checkpoint / "model.safetensors")
    monkeypatch.setenv("LMFORGE_DEBUG", "1")
    with pytest.raises(CheckpointError, match="damaged"):
        main(["generate", "--checkpoint", str(checkpoint), "--prompt", "x"])


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, tmp_path):
    def bug(*args, **kwargs):
        raise KeyError("a bug, not a user's mistake")

    monkeypatch.setattr("lmforge.tasks.data.sample.corpus.build_sample_corpus", bug)
    with pytest.raises(KeyError):
        main(["data", "sample", "--out", str(tmp_path)])
