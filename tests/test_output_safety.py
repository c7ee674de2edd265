"""An output folder is lmforge's only when its manifest says so: a command replaces its own
earlier output (the rerun contract) and refuses anything else - a user's folder, another stage's
output, a folder holding one of its inputs - naming the folder, before any work and again at the
moment of replacement."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from data_stage_fixtures import ARTICLES_EN, html_page
from shard_fixtures import write_shards_dir

from lmforge.cli import build_parser, main
from lmforge.errors import OutputRefused
from lmforge.manifest import claim_output_dir, read_manifest, stage_output
from lmforge.model.checkpoint import TRAINING_STATE_FILE, save_checkpoint, save_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tasks.export_hf import export_hf
from lmforge.tasks.tokens.shards import ShardConfig, build_shards
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, train_tokenizer
from lmforge.tasks.data.warc_writer import WarcWriter

HTML = (("Content-Type", "text/html; charset=utf-8"),)
TEXTS = ["the quick brown fox jumps over the lazy dog", "a backup that is never restored"] * 20


def user_folder(path: Path) -> Path:
    """A folder of the user's own: one file lmforge did not write."""
    path.mkdir(parents=True)
    (path / "p.txt").write_text("my notes")
    return path


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=300, n_layer=1, n_head=2, n_kv_head=2, d_model=32,
                           max_seq_len=32))  # fmt: skip


def write_checkpoint(directory: Path) -> Path:
    """A finished training output: weights, config and its tokenizer, with a manifest."""
    with stage_output(directory, "pretrain", params={}) as stage:
        save_model(tiny_model(), stage.path)
        tokenizer = train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1))
        tokenizer.save(str(stage.path / "tokenizer.json"))
    return directory


def write_warc(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with WarcWriter(path, date=datetime(2025, 3, 14, tzinfo=timezone.utc)) as warc:
        warc.write_warcinfo()
        warc.write_fetch("https://docs.example.org/time.html",
                         html_page("Time", ARTICLES_EN["time"]).encode(), headers=HTML)  # fmt: skip
    return path


def write_data_dir(path: Path) -> Path:
    """A finished data_refresh output with a few documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with stage_output(path, "data_refresh", params={}) as stage:
        (stage.path / "docs").mkdir()
        rows = [{"id": f"doc-{i}", "url": f"https://example.org/{i}", "text": text, "lang": "en"}
                for i, text in enumerate(TEXTS)]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows), stage.path / "docs" / "part-00000.parquet")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Real, tiny inputs for every command, so that only the output can be the reason to refuse."""
    root = tmp_path_factory.mktemp("inputs")
    instruct = root / "instruct.jsonl"
    instruct.write_text("".join(
        json.dumps({"instruction": f"Say {word}.", "output": word}) + "\n"
        for word in ("yes", "no", "maybe", "later")
    ))  # fmt: skip
    labelled = root / "labelled.csv"
    labelled.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(TEXTS)))
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    return SimpleNamespace(
        warc=write_warc(root / "crawl" / "crawl-00000.warc.gz"),
        data=write_data_dir(root / "data"),
        shards=write_shards_dir(root / "shards", [[5, 6, 7]] * 4, [[5, 6]] * 2, vocab_size=300),
        checkpoint=write_checkpoint(root / "train"),
        instruct=instruct,
        labelled=labelled,
        texts=texts,
    )


@pytest.fixture
def unwrapped_flows(monkeypatch):
    """The CLI's flows as plain functions: the refusals come before anything Prefect would run
    (`test_refresh_refusal_through_a_real_prefect_flow_run` goes through Prefect itself)."""
    from lmforge.flows import (
        ablation, build_shards, data_refresh, evaluate, finetune, pretrain, quality,
    )  # fmt: skip

    flows = {data_refresh: ["data_refresh"], build_shards: ["build_shards"],
             pretrain: ["pretrain"], evaluate: ["evaluate"],
             finetune: ["finetune_classifier", "finetune_instruct"],
             quality: ["train_quality_classifier"], ablation: ["ablate"]}  # fmt: skip
    for module, names in flows.items():
        for name in names:
            monkeypatch.setattr(module, name, getattr(module, name).fn)


def refusal(capsys, code: int, folder: Path) -> str:
    """The CLI's answer to a refused output - exit code 2 and one error line naming `folder` -
    returned for a closer look."""
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert code == 2
    assert len(errors) == 1 and str(folder.resolve()) in errors[0], errors
    return errors[0]


# --- export hf ---------------------------------------------------------------------------------


def test_export_into_a_folder_of_other_files_is_refused_and_they_survive(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    keep = user_folder(tmp_path / "keep")
    with pytest.raises(OutputRefused, match=str(keep)):
        export_hf(checkpoint, keep)
    code = main(["export", "hf", "--checkpoint", str(checkpoint), "--out", str(keep)])
    refusal(capsys, code, keep)
    assert sorted(p.name for p in keep.iterdir()) == ["p.txt"]
    assert (keep / "p.txt").read_text() == "my notes"


def test_export_again_replaces_its_own_earlier_export(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    argv = ["export", "hf", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "hf")]
    assert main(argv) == 0
    first = read_manifest(tmp_path / "hf")
    assert first["stage"] == "export_hf"
    assert main(argv) == 0
    assert read_manifest(tmp_path / "hf")["outputs"] == first["outputs"]


def test_export_into_the_checkpoint_it_reads_is_refused(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    with pytest.raises(OutputRefused, match="overlaps the input"):
        export_hf(checkpoint, checkpoint / "hf")
    assert not (checkpoint / "hf").exists()


# --- what a stage may replace ------------------------------------------------------------------


def test_another_stages_output_is_refused(tmp_path):
    with stage_output(tmp_path / "out", "data_refresh", params={}) as stage:
        (stage.path / "x.txt").write_text("data")
    with pytest.raises(OutputRefused, match=r"holds a 'data_refresh' output"):
        with stage_output(tmp_path / "out", "build_shards", params={}):
            pytest.fail("the body must not run")
    assert read_manifest(tmp_path / "out")["stage"] == "data_refresh"


@pytest.mark.parametrize("garbage", ["not json", "[1, 2]", '{"stage": 7}', "\udcff"])
def test_a_manifest_lmforge_did_not_write_is_refused(tmp_path, garbage):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(garbage, errors="surrogateescape")
    with pytest.raises(OutputRefused, match="not an lmforge output"):
        claim_output_dir(out, "build_shards")
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("existing", ["missing", "empty"])
def test_a_new_or_empty_folder_may_receive_any_output(tmp_path, existing):
    out = tmp_path / "out"
    if existing == "empty":
        out.mkdir()
    assert claim_output_dir(out, "build_shards") == out.resolve()


def test_a_file_is_not_an_output_folder(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(OutputRefused, match="is a file"):
        claim_output_dir(tmp_path / "out", "build_shards")


def test_an_output_that_is_holds_or_lies_inside_an_input_is_refused(tmp_path):
    crawl = tmp_path / "crawl"
    warc = crawl / "x.warc.gz"
    for out, source in [(crawl, warc), (crawl / "data", crawl), (warc, warc)]:
        with pytest.raises(OutputRefused, match="overlaps the input"):
            claim_output_dir(out, "data_refresh", [source])
    assert claim_output_dir(tmp_path / "data", "data_refresh", [warc, "https://x/y.warc.gz"])


def test_a_folder_put_in_place_while_the_stage_ran_is_not_replaced(tmp_path):
    # Claimed before the work (nothing there), claimed again at the moment of replacement.
    out = tmp_path / "out"
    with pytest.raises(OutputRefused, match=str(out)):
        with stage_output(out, "build_shards", params={}) as stage:
            (stage.path / "tokenizer.json").write_text("{}")
            user_folder(out)
    assert sorted(p.name for p in out.iterdir()) == ["p.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


# --- shards build ------------------------------------------------------------------------------


def test_shards_into_a_folder_of_other_files_are_refused_before_any_work(inputs, tmp_path):
    keep = user_folder(tmp_path / "keep")
    with pytest.raises(OutputRefused, match=str(keep)):
        build_shards(inputs.data, keep, ShardConfig(vocab_size=300, min_frequency=1))
    assert sorted(p.name for p in keep.iterdir()) == ["p.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_shards_built_again_replace_their_own_earlier_output(inputs, tmp_path):
    config = ShardConfig(vocab_size=300, min_frequency=1, val_fraction=0.3)
    first = build_shards(inputs.data, tmp_path / "shards", config)
    again = build_shards(inputs.data, tmp_path / "shards", config)
    assert again["outputs"] == first["outputs"]


# --- training checkpoints ----------------------------------------------------------------------


def test_a_checkpoint_replaces_only_a_checkpoint_folder(tmp_path):
    step = tmp_path / "checkpoints" / "step-000005"
    save_model(tiny_model(), step)  # an incomplete checkpoint of ours: replaced
    save_checkpoint(tmp_path, 5, tiny_model(), {"step": 5}, keep=2)
    assert (step / TRAINING_STATE_FILE).is_file()

    (step / "p.txt").write_text("my notes")
    with pytest.raises(OutputRefused, match="p.txt"):
        save_checkpoint(tmp_path, 5, tiny_model(), {"step": 5}, keep=2)
    assert (step / "p.txt").read_text() == "my notes"


# --- data refresh ------------------------------------------------------------------------------


def test_refresh_into_the_folder_holding_its_input_is_refused_and_the_warc_survives(
    tmp_path, capsys, unwrapped_flows
):
    crawl = tmp_path / "crawl"
    warc = write_warc(crawl / "x.warc.gz")
    code = main(["data", "refresh", "--input", str(warc), "--out", str(crawl)])
    refusal(capsys, code, crawl)
    assert sorted(p.name for p in crawl.iterdir()) == ["x.warc.gz"]
    assert [p.name for p in tmp_path.iterdir()] == ["crawl"]  # nothing built beside it either


def test_refresh_of_its_own_output_holding_its_input_is_refused(tmp_path, capsys,
                                                                unwrapped_flows):  # fmt: skip
    data = write_data_dir(tmp_path / "data")
    warc = write_warc(data / "copied-in.warc.gz")
    code = main(["data", "refresh", "--input", str(warc), "--out", str(data)])
    assert "overlaps the input" in refusal(capsys, code, data)
    assert warc.is_file() and read_manifest(data)["stage"] == "data_refresh"
    # Refused before any work: no tracking store, no staging folder beside it (the lock may be).
    assert [p.name for p in tmp_path.iterdir() if p.name != ".data.lock"] == ["data"]


@pytest.mark.slow
def test_refresh_refusal_through_a_real_prefect_flow_run(prefect_api, tmp_path, capsys):
    crawl = tmp_path / "crawl"
    warc = write_warc(crawl / "x.warc.gz")
    code = main(["data", "refresh", "--input", str(warc), "--out", str(crawl)])
    refusal(capsys, code, crawl)
    assert sorted(p.name for p in crawl.iterdir()) == ["x.warc.gz"]


# --- every command that takes --out ------------------------------------------------------------


COMMANDS_WITH_OUT = {
    "data refresh": lambda i: ["data", "refresh", "--input", str(i.warc)],
    "shards build": lambda i: ["shards", "build", "--data", str(i.data), "--vocab-size", "300"],
    "train": lambda i: ["train", "--shards", str(i.shards), "--max-steps", "1"],
    "eval --eval-dir": lambda i: ["eval", "--checkpoint", str(i.checkpoint), "--shards",
                                  str(i.shards), "--eval-dir"],  # fmt: skip
    "eval --out": lambda i: ["eval", "--checkpoint", str(i.checkpoint), "--shards",
                             str(i.shards)],  # fmt: skip
    "finetune classify": lambda i: ["finetune", "classify", "--base-model", str(i.checkpoint),
                                    "--data", str(i.labelled)],  # fmt: skip
    "finetune instruct": lambda i: ["finetune", "instruct", "--base-model", str(i.checkpoint),
                                    "--data", str(i.instruct)],  # fmt: skip
    "export hf": lambda i: ["export", "hf", "--checkpoint", str(i.checkpoint)],
    "quality train": lambda i: ["quality", "train", "--positive", str(i.texts), "--negative",
                                str(i.texts)],  # fmt: skip
    "ablate": lambda i: ["ablate", "--input", str(i.warc)],
}


def commands_taking_out(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """`data refresh`, `export hf`, ...: every command of `parser` with an --out option."""
    for action in parser._actions:
        if "--out" in action.option_strings:
            yield " ".join(words)
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield from commands_taking_out(command, (*words, name))


def test_the_matrix_covers_every_command_that_takes_out():
    covered = {name.split(" --")[0] for name in COMMANDS_WITH_OUT} | {"data sample"}
    assert set(commands_taking_out(build_parser())) == covered


@pytest.mark.parametrize("command", COMMANDS_WITH_OUT)
def test_every_command_refuses_a_foreign_out_and_the_users_file_survives(
    command, inputs, tmp_path, capsys, monkeypatch, unwrapped_flows
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    keep = user_folder(tmp_path / "keep")
    flag = [] if command.endswith("--eval-dir") else ["--out"]
    code = main([*COMMANDS_WITH_OUT[command](inputs), *flag, str(keep)])
    refusal(capsys, code, keep)
    assert sorted(p.name for p in keep.iterdir()) == ["p.txt"]
    assert (keep / "p.txt").read_text() == "my notes"


@pytest.mark.slow
def test_the_sample_command_adds_its_files_beside_the_users(tmp_path, capsys):
    # `data sample --out` is a folder of WARC files, not a stage output: it writes only its own
    # sample-NNNNN.warc.gz names there and never replaces the folder.
    keep = user_folder(tmp_path / "keep")
    assert main(["data", "sample", "--out", str(keep)]) == 0
    assert (keep / "p.txt").read_text() == "my notes"
    assert sorted(p.name for p in keep.iterdir())[0:2] == ["p.txt", "sample-00000.warc.gz"]
