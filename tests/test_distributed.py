"""Distributed training on two CPU processes (gloo) matches one process with the same global
batch; rank 0's metrics reach MLflow while it trains, whatever the progress bar draws; an
interrupted run (SIGKILL) resumes from its last checkpoint; MFU and the parallelism helpers
behave. The torchrun tests start real processes: marked slow (~10 s each)."""

import io
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from lmforge.flows.tracking import MetricsLogger
from lmforge.model.checkpoint import latest_checkpoint, load_model
from lmforge.model.config import ModelConfig, ModelSpec
from lmforge.model.gpt import GPT
from lmforge.model.launch import metrics_file_writer, read_metrics_records
from lmforge.model.mfu import gpu_peak_flops, measure_matmul_peak, model_flops_utilization
from lmforge.model.parallel import (
    DistributedEnv,
    PipelineStageModel,
    apply_activation_checkpointing,
    stage_layers,
)
from lmforge.model.strategies import DDPStrategy
from lmforge.model.train import TrainConfig, TrainJob, train
from lmforge.tasks.pretrain import (
    TorchrunOptions,
    run_pretraining,
    run_torchrun,
    torchrun_command,
)
from shard_fixtures import write_shards_dir

VOCAB = 64
MICRO_MODEL = {"n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 32}
# Two processes reduce gradients in a different order than one: float32 rounding, nothing more.
LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    pattern = list(range(2, 26))
    root = tmp_path_factory.mktemp("shards") / "shards"
    # 4 validation documents of 72 tokens: the validation batches are full for every strategy.
    return write_shards_dir(
        root, [pattern * 3 for _ in range(40)], [pattern * 3 for _ in range(4)],
        vocab_size=VOCAB, shard_tokens=1000,
    )


def config(shards, out, **overrides) -> TrainJob:
    values = dict(
        max_steps=8, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=2, eval_every=4,
        eval_batches=2, log_every=1, checkpoint_every=4, device="cpu", progress=False,
    )
    return TrainJob(shards_dir=str(shards), out_dir=str(out), model=ModelSpec(**MICRO_MODEL),
                    train=TrainConfig(**{**values, **overrides}))  # fmt: skip


def collect(run_fn, cfg, **kwargs):
    logs = []
    result = run_fn(cfg, on_log=lambda step, metrics: logs.append((step, dict(metrics))), **kwargs)
    return result, logs


def series(logs, key):
    return [metrics[key] for _, metrics in logs if key in metrics]


@pytest.fixture(scope="module")
def single_runs(shards, tmp_path_factory):
    """One process at global batch 8 (the data-parallel reference) and 4 (the pipeline's)."""
    root = tmp_path_factory.mktemp("single")
    return {
        batch: collect(train, config(shards, root / f"b{batch}", batch_size=batch))
        for batch in (8, 4)
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, per_rank_batch, reference_batch",
    [("ddp", 4, 8), ("fsdp", 4, 8), ("pipeline", 4, 4)],
)
def test_two_processes_reach_the_losses_of_one_with_the_same_global_batch(
    shards, tmp_path, single_runs, strategy, per_rank_batch, reference_batch
):
    reference, reference_logs = single_runs[reference_batch]
    cfg = config(shards, tmp_path / strategy, strategy=strategy, batch_size=per_rank_batch)
    result, logs = collect(run_pretraining, cfg, launch=TorchrunOptions(nproc=2))

    assert result.completed and result.steps == 8 and result.tokens == reference.tokens
    for key in ("loss", "grad_norm", "val_loss"):
        assert series(logs, key) == pytest.approx(series(reference_logs, key), abs=LOSS_TOLERANCE)
    assert 0 < series(logs, "mfu")[-1] < 1
    # Rank 0 gathered the whole model (shards or stages) into ordinary files.
    saved, expected = load_file(tmp_path / strategy / "model.safetensors"), load_file(
        reference.out_dir / "model.safetensors"
    )
    assert saved.keys() == expected.keys()
    assert all(torch.allclose(saved[k], expected[k], atol=1e-4) for k in saved)
    assert load_model(tmp_path / strategy).config.n_layer == 2


@pytest.fixture
def mlflow_store(tmp_path):
    """A SQLite MLflow store in tmp_path, the current tracking URI for the test."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield MlflowClient()
    mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_every_logged_step_of_a_two_process_run_with_a_progress_bar_reaches_mlflow(
    shards, tmp_path, mlflow_store
):
    experiment = mlflow_store.create_experiment("torchrun", (tmp_path / "artifacts").as_uri())
    run_id = mlflow_store.create_run(experiment).info.run_id
    # The progress bar redraws on the console the processes share, without ending its line.
    cfg = config(shards, tmp_path / "ddp", strategy="ddp", progress=True)
    console = io.StringIO()
    result = run_pretraining(
        cfg, on_log=MetricsLogger(run_id), launch=TorchrunOptions(nproc=2), output=console
    )

    def steps(key):
        return [m.step for m in mlflow_store.get_metric_history(run_id, key)]

    assert result.completed
    assert steps("loss") == list(range(1, 9)) and steps("grad_norm") == list(range(1, 9))
    assert steps("val_loss") == [4, 8]
    assert "train: 100%" in console.getvalue()  # the bar still reaches the console


def test_metrics_records_are_read_once_each_and_a_line_being_written_waits(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_metrics_records(path) == ([], 0)  # rank 0 has logged nothing yet
    append = metrics_file_writer(path)
    append(1, {"loss": 4.0})
    with path.open("a") as file:
        file.write('{"step": 2, "metr')  # rank 0 in the middle of a write
    records, offset = read_metrics_records(path)
    assert records == [{"step": 1, "metrics": {"loss": 4.0}}]
    with path.open("a") as file:
        file.write('ics": {"val_loss": 3.5}}\n')
    append(3, {"loss": 3.0})
    records, offset = read_metrics_records(path, offset)
    assert records == [
        {"step": 2, "metrics": {"val_loss": 3.5}}, {"step": 3, "metrics": {"loss": 3.0}}
    ]
    assert read_metrics_records(path, offset) == ([], offset)


# Stands in for torchrun: logs step 1, then finishes only once the parent has forwarded it.
WAITS_FOR_ITS_METRICS_TO_BE_SEEN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lmforge.model.launch import metrics_file_writer, write_result
    from lmforge.model.train import TrainResult

    metrics, result, seen = map(Path, sys.argv[1:])
    metrics_file_writer(metrics)(1, {"loss": 4.0})
    deadline = time.monotonic() + 60
    while not seen.exists():
        if time.monotonic() > deadline:
            sys.exit("step 1 was not forwarded while training ran")
        time.sleep(0.05)
    write_result(result, TrainResult(Path("out"), True, 1, 32, 4.0, None, 10, None, 1.0))
""")


@pytest.mark.slow
def test_metrics_reach_on_log_while_the_processes_still_run(tmp_path, monkeypatch):
    seen = tmp_path / "seen"
    monkeypatch.setattr(
        "lmforge.tasks.pretrain.torchrun_command",
        lambda config_file, launch, metrics_file, result_file: [
            sys.executable, "-c", WAITS_FOR_ITS_METRICS_TO_BE_SEEN,
            str(metrics_file), str(result_file), str(seen),
        ],
    )  # fmt: skip
    job = TrainJob(shards_dir=str(tmp_path / "shards"), out_dir=str(tmp_path / "out"))
    logs = []

    def on_log(step, metrics):
        logs.append((step, dict(metrics)))
        seen.touch()

    result = run_torchrun(job, TorchrunOptions(nproc=2), on_log, io.StringIO())
    assert logs == [(1, {"loss": 4.0})] and result.completed and result.steps == 1


@pytest.mark.slow
def test_ddp_accumulating_micro_batches_reaches_the_losses_of_one_process(shards, tmp_path):
    # 2 ranks x 2 sequences x 2 micro-batches: the 8 windows of the one-process batch.
    reference, reference_logs = collect(
        train, config(shards, tmp_path / "single", batch_size=4, grad_accum=2)
    )
    cfg = config(shards, tmp_path / "ddp", strategy="ddp", batch_size=2, grad_accum=2)
    result, logs = collect(run_pretraining, cfg, launch=TorchrunOptions(nproc=2))
    assert result.completed and result.tokens == reference.tokens
    for key in ("loss", "grad_norm", "val_loss"):
        assert series(logs, key) == pytest.approx(series(reference_logs, key), abs=LOSS_TOLERANCE)


@pytest.mark.slow
def test_a_sharded_checkpoint_resumes_in_a_single_process(shards, tmp_path, single_runs):
    out = tmp_path / "fsdp-then-single"
    first, first_logs = collect(
        run_pretraining, config(shards, out, strategy="fsdp", stop_after=4),
        launch=TorchrunOptions(nproc=2),
    )
    assert not first.completed and first.checkpoint.name == "step-000004"
    second, second_logs = collect(train, config(shards, out, batch_size=8, resume=True))
    reference_logs = single_runs[8][1]
    assert series(first_logs, "loss") + series(second_logs, "loss") == pytest.approx(
        series(reference_logs, "loss"), abs=LOSS_TOLERANCE
    )


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_from_its_last_checkpoint(shards, tmp_path):
    settings = dict(max_steps=40, checkpoint_every=5, eval_every=20, keep_checkpoints=2)
    straight = train(config(shards, tmp_path / "straight", **settings))

    out = tmp_path / "killed"
    config_file = tmp_path / "config.json"
    config_file.write_text(config(shards, out, **settings).model_dump_json())
    metrics_file = tmp_path / "metrics.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "lmforge.model.launch", str(config_file),
         "--metrics", str(metrics_file)],
        stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    while process.poll() is None:
        if read_metrics_records(metrics_file)[0] and latest_checkpoint(out) is not None:
            process.send_signal(signal.SIGKILL)  # no chance to clean up or finish a write
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    killed_at = int(latest_checkpoint(out).name.split("-")[1])
    assert 0 < killed_at < 40

    resumed = train(config(shards, out, resume=True, **settings))
    assert resumed.completed and resumed.steps == 40
    assert resumed.final_train_loss == straight.final_train_loss
    final, expected = load_file(out / "model.safetensors"), load_file(
        straight.out_dir / "model.safetensors"
    )
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_activation_checkpointing_keeps_losses_and_weight_names(shards, tmp_path):
    plain, plain_logs = collect(train, config(shards, tmp_path / "plain", max_steps=3))
    checkpointed, ckpt_logs = collect(
        train, config(shards, tmp_path / "ckpt", max_steps=3, activation_checkpointing=True)
    )
    assert series(ckpt_logs, "loss") == pytest.approx(series(plain_logs, "loss"), abs=1e-6)
    assert load_file(tmp_path / "ckpt" / "model.safetensors").keys() == load_file(
        tmp_path / "plain" / "model.safetensors"
    ).keys()


def test_activation_checkpointing_recomputes_blocks_only_when_gradients_are_needed():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=VOCAB, **MICRO_MODEL))
    idx = torch.randint(0, VOCAB, (2, 8))
    expected = model(idx)
    apply_activation_checkpointing(model)
    assert torch.equal(model(idx), expected)
    with torch.no_grad():
        assert torch.equal(model(idx), expected)


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of this process alone: DDP can wrap a model without torchrun."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    yield DistributedEnv()
    dist.destroy_process_group()


def test_ddp_strategy_accumulates_micro_batch_gradients_like_a_plain_model(one_rank_group):
    torch.manual_seed(0)
    x, y = torch.randint(0, VOCAB, (2, 4, 8)), torch.randint(0, VOCAB, (2, 4, 8))
    reference = GPT(ModelConfig(vocab_size=VOCAB, **MICRO_MODEL))
    model = GPT(ModelConfig(vocab_size=VOCAB, **MICRO_MODEL))
    model.load_state_dict(reference.state_dict())
    strategy = DDPStrategy(one_rank_group, torch.device("cpu"), "float32")
    strategy.wrap(model)

    for micro in range(2):  # the first micro-batch under no_sync, the second reduces
        strategy.forward_backward(x[micro], y[micro], grad_accum=2, last_micro_batch=micro == 1)
        loss = F.cross_entropy(reference(x[micro]).flatten(0, 1), y[micro].flatten())
        (loss / 2).backward()

    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize(
    "overrides", [{}, {"tie_embeddings": False, "position": "learned"}], ids=["rope-tied", "learned"]
)
def test_pipeline_stages_chained_compute_the_whole_models_logits_with_its_weights(overrides):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=VOCAB, **MICRO_MODEL, **overrides))
    first, last = PipelineStageModel(model, 0, 1), PipelineStageModel(model, 1, 2)
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        assert torch.equal(last(first(idx)), model(idx))
    # Each weight is trained by exactly one stage, under the whole model's name.
    assert not set(first.state_dict()) & set(last.state_dict())
    assert set(first.state_dict()) | set(last.state_dict()) == set(model.state_dict())


def test_pipeline_stages_split_blocks_evenly_and_refuse_more_stages_than_blocks():
    assert [stage_layers(5, s, 2) for s in range(2)] == [(0, 3), (3, 5)]
    assert [stage_layers(4, s, 4) for s in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="cannot split 2 blocks into 3 pipeline stages"):
        stage_layers(2, 0, 3)


def test_strategies_that_need_torchrun_are_refused_in_one_process(shards, tmp_path):
    with pytest.raises(ValueError, match="'pipeline' needs at least 2 processes"):
        train(config(shards, tmp_path / "out", strategy="pipeline"))
    with pytest.raises(ValueError, match=r"strategy\n.*'single', 'ddp', 'fsdp' or 'pipeline'"):
        config(shards, tmp_path / "out", strategy="tp")
    with pytest.raises(ValueError, match="multiple of microbatches=3"):
        config(shards, tmp_path / "out", strategy="pipeline", microbatches=3)


def test_torchrun_command_is_standalone_on_one_machine_and_rendezvous_on_several(tmp_path):
    files = tmp_path / "c.json", tmp_path / "m.jsonl", tmp_path / "r.json"
    local = torchrun_command(files[0], TorchrunOptions(nproc=2), *files[1:])
    assert "--nproc-per-node=2" in local and "--standalone" in local
    assert local[-7:] == ["-m", "lmforge.model.launch", str(files[0]),
                          "--metrics", str(files[1]), "--result", str(files[2])]  # fmt: skip
    multi = torchrun_command(
        files[0],
        TorchrunOptions(nproc=8, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500"),
        *files[1:],
    )
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-endpoint=node0:29500"} <= set(multi)
    assert "--standalone" not in multi
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        TorchrunOptions(nnodes=2)


def test_mfu_divides_achieved_by_peak_flops_and_knows_common_gpus():
    assert model_flops_utilization(1e6, 1e5, 1e12, devices=2) == pytest.approx(0.05)
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert gpu_peak_flops("Some Future Accelerator") is None
    peak = measure_matmul_peak(size=128, seconds=0.05)
    assert math.isfinite(peak) and peak > 1e8  # any CPU multiplies faster than 0.1 GFLOP/s
