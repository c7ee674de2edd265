import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.errors import OutputRefused
from lmforge.manifest import read_manifest, verify_outputs
from lmforge.model.checkpoint import (
    TRAINING_STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_model,
    load_training_state,
    save_checkpoint,
    save_model,
)
from lmforge.model.config import ModelConfig, ModelSpec
from lmforge.model.gpt import GPT
from lmforge.model.schedule import LRSchedule
from lmforge.model.train import TrainConfig, TrainJob, train
from shard_fixtures import write_shards_dir

VOCAB = 64
# A model small enough that a training step takes milliseconds.
MICRO_MODEL = {"n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 32}


@pytest.fixture(scope="module")
def repetitive_shards(tmp_path_factory):
    """Documents that repeat one token pattern: a model that learns anything predicts it."""
    pattern = list(range(2, 26))
    train_docs = [pattern * 3 for _ in range(40)]
    val_docs = [pattern * 3 for _ in range(4)]
    root = tmp_path_factory.mktemp("shards") / "shards"
    return write_shards_dir(root, train_docs, val_docs, vocab_size=VOCAB, shard_tokens=1000)


def micro_config(shards, out, **overrides) -> TrainJob:
    values = dict(
        max_steps=20, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=2, eval_every=10,
        eval_batches=2, log_every=1, checkpoint_every=5, keep_checkpoints=2, device="cpu",
        progress=False,
    )
    return TrainJob(shards_dir=str(shards), out_dir=str(out), model=ModelSpec(**MICRO_MODEL),
                    train=TrainConfig(**{**values, **overrides}))  # fmt: skip


def run(config: TrainJob):
    logs: list[tuple[int, dict[str, float]]] = []
    result = train(config, on_log=lambda step, metrics: logs.append((step, metrics)))
    return result, logs


def losses(logs, key="loss"):
    return [(step, metrics[key]) for step, metrics in logs if key in metrics]


# --- schedule ---------------------------------------------------------------------------------


def test_cosine_schedule_warms_up_linearly_then_decays_to_min_lr():
    schedule = LRSchedule(max_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)  # halfway through the cosine
    assert schedule(110) == schedule(500) == pytest.approx(0.1)
    values = [schedule(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_wsd_schedule_holds_the_peak_then_decays_linearly_at_the_end():
    schedule = LRSchedule(1.0, 0.0, warmup_steps=5, total_steps=100, kind="wsd", decay_fraction=0.2)
    assert [schedule(s) for s in (5, 50, 79, 80)] == [1.0, 1.0, 1.0, 1.0]
    assert schedule(90) == pytest.approx(0.5)
    assert schedule(100) == 0.0


def test_schedule_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="min_lr <= max_lr"):
        LRSchedule(max_lr=0.1, min_lr=1.0, warmup_steps=0, total_steps=10)
    with pytest.raises(ValueError, match="warmup_steps <= total_steps"):
        LRSchedule(max_lr=1.0, min_lr=0.1, warmup_steps=20, total_steps=10)
    with pytest.raises(ValueError, match="'cosine' or 'wsd'"):
        LRSchedule(1.0, 0.1, 0, 10, kind="linear")


# --- checkpoints ------------------------------------------------------------------------------


def micro_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=VOCAB, **MICRO_MODEL))


def test_saved_model_loads_back_with_identical_outputs(tmp_path):
    model = micro_model()
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.tok_emb.weight  # the tie survives the round trip
    idx = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model.eval()(idx))
    assert json.loads((tmp_path / "model" / "model_config.json").read_text())["d_model"] == 32


def test_loading_a_directory_without_model_files_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_model(tmp_path)


def test_checkpoints_keep_only_the_newest_k_and_the_latest_is_found(tmp_path):
    model = micro_model()
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, model, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000010", "step-000015"]
    assert latest_checkpoint(tmp_path).name == "step-000015"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []
    assert load_training_state(latest_checkpoint(tmp_path)) == {"step": 15}
    assert latest_checkpoint(tmp_path / "no-run-here") is None


def test_a_checkpoint_directory_without_training_state_is_not_resumed_from(tmp_path):
    save_checkpoint(tmp_path, 5, micro_model(), {"step": 5}, keep=3)
    half_written = tmp_path / "checkpoints" / "step-000010"
    save_model(micro_model(), half_written)  # weights but no training state
    assert latest_checkpoint(tmp_path).name == "step-000005"


class Payload:
    """Stands for any object a hostile pickle could smuggle into a checkpoint."""


def test_training_state_loading_refuses_arbitrary_pickled_objects(tmp_path):
    checkpoint = save_checkpoint(tmp_path, 1, micro_model(), {"step": 1}, keep=1)
    torch.save({"step": 1, "payload": Payload()}, checkpoint / TRAINING_STATE_FILE)
    with pytest.raises(CheckpointError, match="objects other than tensors .* could run code"):
        load_training_state(checkpoint)


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: b"", lambda data: b"\x00garbage" * 30],
    ids=["truncated", "empty", "garbage"],
)
def test_a_damaged_training_state_is_named_as_damaged(tmp_path, damage):
    checkpoint = save_checkpoint(tmp_path, 1, micro_model(), {"step": 1}, keep=1)
    state = checkpoint / TRAINING_STATE_FILE
    state.write_bytes(damage(state.read_bytes()))
    with pytest.raises(CheckpointError, match=f"{state} is damaged or incomplete"):
        load_training_state(checkpoint)


def test_truncated_weights_are_named_as_damaged_not_a_library_error(tmp_path):
    save_model(micro_model(), tmp_path / "model")
    weights = tmp_path / "model" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{weights} is damaged or incomplete"):
        load_model(tmp_path / "model")


# --- training ---------------------------------------------------------------------------------


def test_training_config_rejects_values_out_of_range_naming_the_field():
    for field, value in [("batch_size", 0), ("lr", 0.0), ("weight_decay", -0.1),
                         ("eval_every", 0), ("checkpoint_every", 0), ("log_every", 0),
                         ("betas", (0.9, 1.0))]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"(?m)^{field}\b"):
            TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=r"(?m)^dtype\n.*'auto', 'float32' or 'bfloat16'"):
        TrainConfig(dtype="fp8")
    with pytest.raises(ValueError, match="min_lr <= max_lr"):
        TrainConfig(min_lr=1.0)
    with pytest.raises(ValueError, match="batch_size=5 must be a multiple of microbatches=2"):
        TrainConfig(strategy="pipeline", batch_size=5, microbatches=2)


def test_model_spec_overrides_the_preset_and_refuses_shapes_that_cannot_work():
    shape = ModelSpec(n_layer=3, d_model=48, n_head=4, n_kv_head=2, qk_norm=True, mlp="gelu")
    resolved = shape.resolve(vocab_size=300)
    assert (resolved.n_layer, resolved.d_model, resolved.n_head, resolved.n_kv_head) == (3, 48, 4, 2)
    assert resolved.qk_norm and resolved.mlp == "gelu" and resolved.d_ff == 4 * 48
    assert resolved.max_seq_len == ModelConfig.preset("tiny", 300).max_seq_len  # the preset's
    with pytest.raises(ValueError, match="d_model=50 is not divisible by n_head=4"):
        ModelSpec(d_model=50, n_head=4)
    with pytest.raises(ValueError, match="n_head=4 is not divisible by n_kv_head=3"):
        ModelSpec(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match=r"(?m)^n_layer\b"):
        ModelSpec(n_layer=0)
    with pytest.raises(ValueError, match=r"(?m)^preset\b"):
        ModelSpec(preset="huge")


def test_a_run_shorter_than_the_intervals_still_evaluates_and_checkpoints_at_the_end(
    repetitive_shards, tmp_path
):
    out = tmp_path / "out"
    result, logs = run(micro_config(repetitive_shards, out, max_steps=3, eval_every=100,
                                    checkpoint_every=100, log_every=100))  # fmt: skip
    assert [step for step, metrics in logs if "val_loss" in metrics] == [3]
    assert [step for step, metrics in logs if "loss" in metrics] == [3]
    assert latest_checkpoint(out).name == "step-000003"
    assert result.checkpoint == latest_checkpoint(out)


def test_short_training_run_learns_a_repetitive_corpus(repetitive_shards, tmp_path):
    config = micro_config(repetitive_shards, tmp_path / "out", max_steps=60, eval_every=30)
    result, logs = run(config)
    train_losses = [loss for _, loss in losses(logs)]
    assert train_losses[0] == pytest.approx(math.log(VOCAB), abs=0.3)
    assert result.final_train_loss < 0.5
    assert result.final_val_loss < 0.5
    assert [step for step, _ in losses(logs, "val_loss")] == [30, 60]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens", "epoch"} <= set(logs[0][1])
    assert result.completed and result.steps == 60 and result.tokens == 60 * 4 * 16


def test_finished_run_writes_model_tokenizer_and_manifest_last(repetitive_shards, tmp_path):
    out = tmp_path / "out"
    result, _ = run(micro_config(repetitive_shards, out))
    manifest = read_manifest(out)
    verify_outputs(out)
    assert sorted(o["path"] for o in manifest["outputs"]) == [
        "model.safetensors", "model_config.json", "tokenizer.json"
    ]
    assert manifest["stage"] == "pretrain"
    assert manifest["inputs"][0]["stage"] == "build_shards"
    assert manifest["params"]["train"]["max_steps"] == 20 and manifest["params"]["train"]["lr"] == 1e-2
    assert manifest["params"]["model"]["n_layer"] == MICRO_MODEL["n_layer"]
    assert manifest["counts"] == {
        "steps": 20,
        "tokens": 20 * 4 * 16,
        "final_train_loss": result.final_train_loss,
        "final_val_loss": result.final_val_loss,
        "parameters": result.num_parameters,
    }
    tokenizer = (repetitive_shards / "tokenizer.json").read_bytes()
    assert (out / "tokenizer.json").read_bytes() == tokenizer
    assert load_model(out).config.vocab_size == VOCAB
    assert load_model(latest_checkpoint(out)).config.vocab_size == VOCAB


def test_resumed_run_matches_an_uninterrupted_one_exactly(repetitive_shards, tmp_path):
    straight, straight_logs = run(micro_config(repetitive_shards, tmp_path / "straight"))

    interrupted = tmp_path / "interrupted"
    first, first_logs = run(micro_config(repetitive_shards, interrupted, stop_after=10))
    assert not first.completed and first.steps == 10
    assert first.checkpoint.name == "step-000010"
    assert not (interrupted / "manifest.json").exists()
    second, second_logs = run(micro_config(repetitive_shards, interrupted, resume=True))

    assert losses(first_logs) + losses(second_logs) == losses(straight_logs)
    assert losses(first_logs, "val_loss") + losses(second_logs, "val_loss") == losses(
        straight_logs, "val_loss"
    )
    assert second.final_train_loss == straight.final_train_loss
    final_straight = load_file(tmp_path / "straight" / "model.safetensors")
    final_resumed = load_file(interrupted / "model.safetensors")
    assert final_straight.keys() == final_resumed.keys()
    assert all(torch.equal(final_straight[k], final_resumed[k]) for k in final_straight)


def test_resume_without_a_checkpoint_starts_a_fresh_run(repetitive_shards, tmp_path):
    result, logs = run(micro_config(repetitive_shards, tmp_path / "out", max_steps=3, resume=True))
    assert result.completed and logs[0][0] == 1


def test_fresh_run_refuses_a_directory_holding_another_runs_checkpoints(
    repetitive_shards, tmp_path
):
    out = tmp_path / "out"
    run(micro_config(repetitive_shards, out, stop_after=5))
    with pytest.raises(OutputRefused, match="holds the checkpoints .* pass --resume"):
        run(micro_config(repetitive_shards, out))


def test_training_refuses_a_folder_of_other_files_and_leaves_it_alone(repetitive_shards, tmp_path):
    out = tmp_path / "my-folder"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(OutputRefused, match="not an lmforge output"):
            run(micro_config(repetitive_shards, out, resume=resume))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_run_that_stopped_before_its_first_checkpoint_can_start_again(
    repetitive_shards, tmp_path
):
    out = tmp_path / "out"
    (out / "checkpoints" / ".step-000005.tmp-0123abcd").mkdir(parents=True)  # killed mid-write
    result, _ = run(micro_config(repetitive_shards, out, max_steps=3))
    assert result.completed and (out / "manifest.json").is_file()


@pytest.fixture(scope="module")
def finished_run(repetitive_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "out"
    run(micro_config(repetitive_shards, out))
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def corrupt_state(checkpoint: Path) -> None:
    state = checkpoint / TRAINING_STATE_FILE
    state.write_bytes(state.read_bytes()[:100])


def foreign_state(checkpoint: Path) -> None:
    torch.save({"step": 20, "payload": Payload()}, checkpoint / TRAINING_STATE_FILE)


def state_of_another_kind(checkpoint: Path) -> None:
    torch.save({"step": 20}, checkpoint / TRAINING_STATE_FILE)


def truncated_weights(checkpoint: Path) -> None:
    weights = checkpoint / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-64])


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (corrupt_state, CheckpointError, "training_state.pt is damaged or incomplete"),
        (foreign_state, CheckpointError, "objects other than tensors"),
        (state_of_another_kind, CheckpointError, "training state lacks tokens"),
        (truncated_weights, CheckpointError, "model.safetensors is damaged or incomplete"),
    ],
    ids=["garbage-state", "unpicklable-state", "foreign-state", "truncated-weights"],
)
def test_a_failed_resume_leaves_a_finished_run_finished_and_unchanged(
    finished_run, repetitive_shards, tmp_path, damage, error, message
):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    damage(latest_checkpoint(out))
    before = files_of(out)
    with pytest.raises(error, match=message):
        run(micro_config(repetitive_shards, out, resume=True))
    assert files_of(out) == before
    verify_outputs(out)  # the manifest still vouches for the finished model


def test_a_resume_with_changed_settings_leaves_a_finished_run_unchanged(
    finished_run, repetitive_shards, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    before = files_of(out)
    with pytest.raises(ValueError, match="settings differ"):
        run(micro_config(repetitive_shards, out, resume=True, lr=3e-3))
    assert files_of(out) == before


def test_resume_with_changed_settings_is_refused(repetitive_shards, tmp_path):
    out = tmp_path / "out"
    run(micro_config(repetitive_shards, out, stop_after=5))
    with pytest.raises(ValueError, match="settings differ .*: schedule"):
        run(micro_config(repetitive_shards, out, resume=True, lr=3e-3))
    with pytest.raises(ValueError, match="data order cannot be resumed .*seq_len: saved 16, now 8"):
        run(micro_config(repetitive_shards, out, resume=True, seq_len=8))


def test_seq_len_longer_than_the_model_context_is_rejected(repetitive_shards, tmp_path):
    with pytest.raises(ValueError, match="seq_len=64 exceeds the model's max_seq_len=32"):
        run(micro_config(repetitive_shards, tmp_path / "out", seq_len=64))


@pytest.mark.slow
def test_compiled_training_follows_the_eager_losses(repetitive_shards, tmp_path):
    eager = losses(run(micro_config(repetitive_shards, tmp_path / "eager", max_steps=3))[1])
    compiled = losses(
        run(micro_config(repetitive_shards, tmp_path / "compiled", max_steps=3, compile=True))[1]
    )
    # Inductor reorders float reductions (and the eager CPU run uses the fused loss): close, not
    # bit-identical.
    assert [step for step, _ in compiled] == [step for step, _ in eager] == [1, 2, 3]
    assert [loss for _, loss in compiled] == pytest.approx([loss for _, loss in eager], rel=1e-3)
