"""Resuming the pipeline: finished stages with the same inputs, parameters and code are reused."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest

from lmforge.flows.stage_cache import StageCache, code_version, stage_key
from lmforge.manifest import read_manifest, stage_output


def make_stage(out: Path, text: str = "hello") -> Path:
    with stage_output(out, "example", {"n": 1}) as stage:
        (stage.path / "data.txt").write_text(text)
    return out


def test_code_version_names_the_release_and_a_source_digest():
    from lmforge import __version__

    assert code_version().startswith(f"{__version__}+src.")
    assert code_version() == code_version()


def test_stage_key_changes_with_parameters_inputs_and_stage():
    inputs = [{"path": "/x.warc.gz", "sha256": "ab"}]
    key = stage_key("build_shards", {"vocab_size": 400}, inputs)
    assert key == stage_key("build_shards", {"vocab_size": 400}, inputs)
    assert key != stage_key("build_shards", {"vocab_size": 401}, inputs)
    other_file = [{"path": "/x.warc.gz", "sha256": "cd"}]
    assert key != stage_key("build_shards", {"vocab_size": 400}, other_file)
    assert key != stage_key("pretrain", {"vocab_size": 400}, inputs)


def test_a_recorded_output_is_found_again(tmp_path):
    out = make_stage(tmp_path / "stage")
    cache = StageCache(tmp_path)
    assert cache.lookup("example", "k1", out) is None  # nothing recorded yet
    cache.store("example", "k1", out)
    assert cache.lookup("example", "k1", out)["stage"] == "example"
    assert cache.lookup("example", "k2", out) is None  # other inputs or parameters


def test_a_rebuilt_deleted_or_damaged_output_is_not_reused(tmp_path):
    cache = StageCache(tmp_path)
    out = make_stage(tmp_path / "stage")
    cache.store("example", "k", out)
    make_stage(out, "rebuilt by someone else")
    assert cache.lookup("example", "k", out) is None
    cache.store("example", "k", out)
    (out / "data.txt").write_text("truncated")
    assert cache.lookup("example", "k", out) is None
    shutil.rmtree(out)
    assert cache.lookup("example", "k", out) is None


@pytest.mark.slow
def test_rerun_after_a_crash_in_the_last_stage_runs_only_that_stage(
    prefect_api, tmp_path, monkeypatch
):
    from lmforge.flows.params import PipelineRun
    from lmforge.flows.pipeline import pipeline
    from lmforge.model.train import TrainConfig
    from lmforge.tasks.tokens.shards import ShardConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = dict(
        shards=ShardConfig(vocab_size=300),
        train=TrainConfig(max_steps=2, batch_size=2, seq_len=16),
        run=PipelineRun(work_dir=str(tmp_path / "work")),
    )
    first = pipeline(**params)
    assert set(first["stages"].values()) == {"ran"}
    # A crash in evaluate: its output never appeared.
    shutil.rmtree(Path(first["results"]).parent)
    second = pipeline(**params)
    assert second["stages"] == {
        "data_refresh": "cached", "build_shards": "cached", "pretrain": "cached", "evaluate": "ran",
    }
    assert second["val_loss"] == pytest.approx(first["val_loss"])
    mlflow.set_tracking_uri(second["mlflow_tracking_uri"])
    children = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{second['mlflow_run_id']}'",
        output_format="list",
    )
    cache_tags = {run.data.tags["lmforge.stage"]: run.data.tags.get("lmforge.cache")
                  for run in children}
    assert cache_tags == {
        "data_refresh": "hit", "build_shards": "hit", "pretrain": "hit", "evaluate": None,
    }
    reused = next(run for run in children if run.data.tags["lmforge.stage"] == "build_shards")
    assert reused.inputs.dataset_inputs[0].dataset.name == "data_refresh"
    # Other parameters: the affected stages run again.
    third = pipeline(**{**params, "train": TrainConfig(max_steps=3, batch_size=2, seq_len=16)})
    assert third["stages"]["build_shards"] == "cached" and third["stages"]["pretrain"] == "ran"
    # The 3-step model has a folder of its own: the 2-step one, which a registered version
    # names, is never overwritten, and `work/train` points at the newest.
    assert third["checkpoint"] != first["checkpoint"]
    assert read_manifest(first["checkpoint"])["counts"]["steps"] == 2
    assert read_manifest(third["checkpoint"])["counts"]["steps"] == 3
    assert (tmp_path / "work" / "train").resolve() == Path(third["checkpoint"])
    # Back to the first settings: its finished folder is found again, not retrained.
    fourth = pipeline(**params)
    assert fourth["stages"]["pretrain"] == "cached"
    assert fourth["checkpoint"] == first["checkpoint"]
