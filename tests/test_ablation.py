"""Data ablations: variants of the data stage trained and scored alike, compared with the base
against the seed-to-seed spread; an invalid variant refused before any work; a killed ablation
resumed without rerunning the variants it finished; early data work shared between variants."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from lmforge.cli import main
from lmforge.flows.ablation import (
    BaseVariantFailed,
    BaseVariantGate,
    plan_variants,
    seed_train_config,
)
from lmforge.flows.params import AblationRun
from lmforge.manifest import read_manifest
from lmforge.model.data import open_token_split
from lmforge.model.train import TrainConfig
from lmforge.recipes import ConfigError
from lmforge.tasks import plots
from lmforge.tasks.ablation.compare import (
    BETTER,
    NO_SPREAD,
    WITHIN_SE,
    WITHIN_SPREAD,
    WORSE,
    Score,
    accuracy_stderr,
    blimp_stderr,
    compare_variants,
    comparison_json,
    comparison_markdown,
    difference,
    pooled_std,
    seed_scores,
    summarize,
    verdict_lines,
)
from lmforge.tasks.ablation.config import AblationConfig
from lmforge.tasks.ablation.heldout import HeldoutError, write_heldout_shards
from lmforge.tasks.ablation.overlap import heldout_copies, text_digest
from lmforge.tasks.data.sample.corpus import build_sample_corpus
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, tokenizer_sha256, train_tokenizer

# --- the comparison's arithmetic ----------------------------------------------------------------


def scores(*values: float, stderr: float | None = None) -> list[Score]:
    return [Score(value, stderr) for value in values]


def test_a_summary_is_the_mean_sample_std_range_and_mean_standard_error_over_seeds():
    summary = summarize([Score(2.0, 0.1), Score(4.0, 0.3)])
    assert (summary.mean, summary.n, summary.min, summary.max) == (3.0, 2, 2.0, 4.0)
    assert summary.std == pytest.approx(math.sqrt(2.0))  # sample std: n - 1 in the denominator
    assert summary.stderr == pytest.approx(0.2)
    one = summarize(scores(5.0))
    assert one.std is None and one.stderr is None


def test_the_pooled_std_weighs_each_spread_by_its_degrees_of_freedom():
    a, b = summarize(scores(1.0, 2.0, 3.0)), summarize(scores(10.0, 12.0))  # s = 1 and sqrt(2)
    assert pooled_std(a, b) == pytest.approx(math.sqrt((2 * 1.0 + 1 * 2.0) / 3))
    assert pooled_std(summarize(scores(1.0)), summarize(scores(2.0))) is None


def test_a_difference_beyond_twice_the_seed_spread_is_better_or_worse_by_the_metrics_direction():
    base = summarize(scores(2.00, 2.02, 1.98))  # std 0.02
    lower = summarize(scores(1.90, 1.92, 1.88))
    assert difference("val_bpb", lower, base).verdict == BETTER  # bits per byte: lower is better
    assert difference("val_bpb", base, lower).verdict == WORSE
    assert difference("val_bpb", lower, base).diff == pytest.approx(-0.10)
    assert difference("blimp_acc", lower, base).verdict == WORSE  # accuracy: higher is better
    assert difference("hellaswag.ppl", lower, base).verdict == BETTER


def test_a_difference_within_twice_the_seed_spread_is_not_called_either_way():
    base = summarize(scores(2.00, 2.10, 1.90))  # std 0.1: 2 x 0.1 = 0.2 > 0.15
    assert difference("val_bpb", summarize(scores(1.85, 1.95, 1.75)), base).verdict == WITHIN_SPREAD


def test_with_one_seed_no_spread_is_measured_however_large_the_difference():
    versus = difference("val_bpb", summarize(scores(1.0)), summarize(scores(3.0)))
    assert versus.verdict == NO_SPREAD and versus.spread is None and versus.diff == -2.0


def test_a_benchmark_difference_within_two_standard_errors_is_never_significant():
    # Seeds agree closely, but the items' sampling error (SE 0.02 each) swamps 0.05.
    base = summarize(scores(0.50, 0.50, 0.50, stderr=0.02))
    variant = summarize(scores(0.55, 0.55, 0.55, stderr=0.02))
    versus = difference("blimp_acc", variant, base)
    assert versus.stderr == pytest.approx(math.hypot(0.02, 0.02))
    assert versus.verdict == WITHIN_SE
    far = summarize(scores(0.60, 0.61, 0.59, stderr=0.02))
    assert difference("blimp_acc", far, base).verdict == BETTER


def test_blimp_standard_error_is_binomial_for_one_paradigm_and_averages_over_paradigms():
    assert accuracy_stderr(0.8, 100) == pytest.approx(0.04)
    assert blimp_stderr({"a": 0.8}, {"a": 100}) == pytest.approx(0.04)
    two = blimp_stderr({"a": 0.8, "b": 0.5}, {"a": 100, "b": 25})
    assert two == pytest.approx(math.sqrt(0.04**2 + 0.1**2) / 2)


def test_seed_scores_reads_heldout_blimp_and_benchmarks_with_their_standard_errors():
    results = {
        "val_bpb": 1.5, "val_loss": 3.0, "blimp_acc": 0.75, "blimp": {"a": 0.75},
        "benchmarks": {"hellaswag": {"acc": 0.3, "acc_stderr": 0.01, "acc_norm": 0.31,
                                     "acc_norm_stderr": float("nan"), "n": 10}},
    }  # fmt: skip
    found = seed_scores(results, {"a": 48})
    assert found["val_bpb"] == Score(1.5) and found["val_loss"] == Score(3.0)
    assert found["blimp_acc"].stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 48))
    assert found["hellaswag.acc"] == Score(0.3, 0.01)
    assert found["hellaswag.acc_norm"] == Score(0.31, None)  # no finite SE: none claimed


def test_the_table_json_and_verdicts_carry_every_variant_against_the_base():
    per_seed = {
        "default": [{"val_bpb": Score(2.0)}, {"val_bpb": Score(2.02)}],
        "raw": [{"val_bpb": Score(2.5)}, {"val_bpb": Score(2.52)}],
    }
    compared = compare_variants(per_seed, "default")
    extra = {
        "default": {"documents": 40, "train_tokens": 1000, "epochs": 2.0, "heldout_copies": 0},
        "raw": {"documents": 90, "train_tokens": 2500, "epochs": 0.8, "heldout_copies": 3},
    }
    comparison = comparison_json(compared, "default", extra)
    raw = comparison["variants"]["raw"]["metrics"]["val_bpb"]
    assert raw["diff"] == pytest.approx(0.5) and raw["verdict"] == WORSE
    assert comparison["variants"]["default"]["metrics"]["val_bpb"]["verdict"] == "base"
    table = comparison_markdown(comparison)
    assert "| raw | 90 | 2,500 | 0.80 | 3 | 2 | 2.5100 ± 0.0141 | +0.5000 | worse |" in table
    assert verdict_lines(comparison) == [
        "raw: val_bpb 2.5100 vs 2.0100 (+0.5000; seed spread 0.0141): worse"
    ]


# --- the configuration --------------------------------------------------------------------------


def test_the_built_in_ablation_adds_language_id_heuristic_filters_and_dedup_in_turn():
    variants = AblationConfig().variant_sections()
    assert list(variants) == ["default", "raw", "language_id", "heuristic_filters"]
    names = ("raw", "language_id", "heuristic_filters", "default")
    raw, lang, heuristics, default = (variants[name].data for name in names)
    assert raw.min_lang_score == 0 and raw.gopher_quality is None and not raw.dedup
    assert lang.min_lang_score == default.min_lang_score and lang.c4_quality is None
    assert heuristics.fineweb_quality == default.fineweb_quality and not heuristics.dedup
    assert default.dedup


def test_a_variant_overrides_data_keys_nested_as_in_recipes_and_the_mixing_of_shards():
    ablation = AblationConfig(
        base={"data": {"gopher_quality": {"min_words": 30}}, "shards": {"vocab_size": 500}},
        variants={"short": {"data": {"gopher_quality": {"max_words": 500}}},
                  "mixed": {"shards": {"mix_language_weights": {"en": 2}}}},  # fmt: skip
    )
    variants = ablation.variant_sections()
    assert variants["short"].data.gopher_quality.min_words == 30  # the base's, kept
    assert variants["short"].data.gopher_quality.max_words == 500
    assert variants["mixed"].shards.mix_language_weights == {"en": 2.0}
    assert variants["mixed"].shards.vocab_size == 500


@pytest.mark.parametrize(
    "variants, named",
    [
        ({"x": {"data": {"gopher_qualty": None}}},
         ["variant 'x'", "data.gopher_qualty", "did you mean data.gopher_quality"]),
        ({"x": {"data": {"gopher_quality": {"min_wrds": 3}}}},
         ["variant 'x'", "min_wrds", "(did you mean data.gopher_quality.min_words?)"]),
        ({"x": {"data": {"min_lang_score": 3}}}, ["variant 'x'", "data.min_lang_score"]),
        ({"x": {"train": {"max_steps": 3}}}, ["variant 'x'", "'train'"]),
        ({"x": {"shards": {"vocab_size": 300}}}, ["variant 'x'", "shards.vocab_size"]),
        ({"no/slash": {}}, ["'no/slash'"]),
        ({"default": {"data": {"dedup": False}}}, ["variant 'default'", "base"]),
    ],
)  # fmt: skip
def test_an_invalid_variant_names_the_variant_and_the_key(variants, named):
    with pytest.raises(ConfigError) as error:
        AblationConfig(variants=variants)
    for part in named:
        assert part in str(error.value)


def test_every_variant_trains_the_same_model_for_the_same_tokens_on_one_tokenizer(tmp_path):
    ablation = AblationConfig(base={"train": {"max_steps": 50, "checkpoint_every": 10}},
                              seeds=[0, 3])  # fmt: skip
    plans = plan_variants(ablation, AblationRun(), tmp_path, ["a.warc.gz"], tmp_path / "held")
    base_tokenizer = str(tmp_path / "variants" / "default" / "shards" / "tokenizer.json")
    assert plans[0].name == "default" and plans[0].shards.tokenizer_path is None
    for plan in plans[1:]:
        assert plan.shards.tokenizer_path == base_tokenizer
    for plan in plans:
        assert [seed.train.seed for seed in plan.seeds] == [0, 3]
        for seed in plan.seeds:
            assert seed.train.model_dump(exclude={"seed"}) == plans[0].seeds[0].train.model_dump(
                exclude={"seed"}
            )
            assert seed.eval_run.shards == str(tmp_path / "held")
            assert not seed.train_run.register_model  # ablation models stay out of the registry
        assert plan.data_run.input == ["a.warc.gz"]
        assert plan.data_run.extraction_cache == str(tmp_path / "cache" / "extraction")


def test_each_seed_resumes_and_keeps_every_checkpoint_for_the_heldout_curve():
    train = seed_train_config(TrainConfig(max_steps=45, checkpoint_every=10), 7, True)
    assert (train.seed, train.resume, train.keep_checkpoints, train.progress) == (7, True, 5, False)
    unchanged = TrainConfig().keep_checkpoints
    assert seed_train_config(TrainConfig(), 0, False).keep_checkpoints == unchanged


def test_a_variant_waiting_for_a_failed_base_is_released_with_the_reason():
    gate = BaseVariantGate()
    gate.reached("data")
    gate.failed(RuntimeError("shards: no document fell into the val split"))
    gate.wait("data", "raw")  # reached before the failure: goes on
    with pytest.raises(BaseVariantFailed, match="variant 'raw' stopped.*val split"):
        gate.wait("shards", "raw")


def test_an_invalid_variant_is_refused_by_the_cli_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    recipe = tmp_path / "ablation.yaml"
    recipe.write_text(yaml.safe_dump({
        "ablation": {"variants": {"raw": {"data": {"gopher_qualty": None}}}},
        "run": {"out": str(out)},
    }))  # fmt: skip
    assert main(["ablate", "--config", str(recipe)]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("lmforge ablate: error: variant 'raw': unknown key data.gopher_qualty")
    assert "did you mean data.gopher_quality" in error
    assert not out.exists()


# --- a user's held-out set ----------------------------------------------------------------------


TEXTS = ["the quick brown fox jumps over the lazy dog", "a tiny model reads a held-out page"]


def test_a_users_heldout_jsonl_is_the_val_split_of_shards_with_the_shared_tokenizer(tmp_path):
    tokenizer = train_tokenizer(TEXTS * 20, TokenizerConfig(vocab_size=300, min_frequency=1))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    source = tmp_path / "heldout.jsonl"
    records = [{"text": text, "lang": "en"} for text in TEXTS] + [{"text": ""}]
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    manifest = write_heldout_shards(source, tmp_path / "tokenizer.json", tmp_path / "held")
    assert manifest["stage"] == "build_shards"  # what `lmforge eval` reads
    assert manifest["tokenizer"]["sha256"] == tokenizer_sha256(tmp_path / "tokenizer.json")
    val = manifest["splits"]["val"]
    assert val["documents"] == 2 and val["bytes"] == sum(len(t.encode()) for t in TEXTS)
    assert open_token_split(tmp_path / "held" / "val").num_tokens == val["tokens"]
    assert manifest["splits"]["train"]["documents"] == 0
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(HeldoutError, match="bad.jsonl:1"):
        write_heldout_shards(tmp_path / "bad.jsonl", tmp_path / "tokenizer.json", tmp_path / "x")


def test_the_plots_draw_curves_per_variant_and_score_bars(tmp_path):
    curves = {
        "default": [[{"tokens": 10, "val_bpb": 2.0}, {"tokens": 20, "val_bpb": 1.8}]] * 2,
        "raw": [[{"tokens": 10, "val_bpb": 2.1}, {"tokens": 20, "val_bpb": 1.9}]],
    }
    assert plots.ablation_curves(curves, tmp_path / "curves.png", "val_bpb").stat().st_size
    bars = {"blimp_acc": {"default": (0.6, 0.05), "raw": (0.55, None)}}
    assert plots.ablation_scores(bars, tmp_path / "bars.png").stat().st_size


def test_copies_of_heldout_texts_in_a_train_split_are_counted_up_to_case_and_spaces():
    held = [text_digest("A held-out  page.\n"), text_digest("Another one.")]
    train = [text_digest("a HELD-OUT page."), text_digest("something else"), held[1]]
    assert heldout_copies(held, train) == 2


# --- end to end: killed after the base variant, then resumed -------------------------------------

BASE = {
    "shards": {"vocab_size": 300, "val_fraction": 0.2},
    "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "max_seq_len": 32},
    "train": {"max_steps": 8, "batch_size": 4, "seq_len": 32, "checkpoint_every": 4,
              "eval_every": 4, "eval_batches": 2, "log_every": 2},
    "eval": {"max_val_tokens": 1024, "max_tokens_per_language": 0, "prompts": ["A"],
             "max_new_tokens": 2},
}  # fmt: skip
STAGE_OUTPUTS = ("data", "shards", "train-seed0", "eval-seed0")


def descendants_killed(process: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (training runs in sessions of their
    own), as a crash or an OOM killer would end them: no handler runs."""
    family = psutil.Process(process.pid).children(recursive=True)
    for member in [psutil.Process(process.pid), *family]:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait()


@pytest.fixture(scope="module")
def killed_then_resumed(prefect_api, tmp_path_factory):
    """`lmforge ablate --config` of a base and a variant that only skips dedup (a late step),
    one at a time: killed once the base variant finished, then run again to the end."""
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("ablation")
    build_sample_corpus(root / "crawl", n_files=2, max_pages=60)
    blimp = root / "blimp"
    blimp.mkdir()
    pairs = [{"sentence_good": "The function returns a list.",
              "sentence_bad": "The function return a list."}]  # fmt: skip
    (blimp / "agreement.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = root / "out"
    recipe = root / "ablation.yaml"
    recipe.write_text(yaml.safe_dump({
        "ablation": {"base": BASE, "variants": {"no_dedup": {"data": {"dedup": False}}},
                     "curve_tokens": 256},
        "run": {"input": [str(root / "crawl" / "*.warc.gz")], "out": str(out),
                "blimp": str(blimp), "runner": "threads", "workers": 2, "parallel": 1},
    }))  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "lmforge.cli", "ablate", "--config", str(recipe)]
    finished_base = out / "variants" / "default" / ".stage-cache" / "evaluate-seed0.json"
    with open(root / "first.log", "w") as log:
        first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not finished_base.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        descendants_killed(first)
    assert finished_base.exists(), (root / "first.log").read_text()[-3000:]
    base = out / "variants" / "default"
    kept = {name: (base / name / "manifest.json").stat().st_mtime_ns for name in STAGE_OUTPUTS}
    was_complete = (out / "comparison").exists()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, kept, was_complete, first.returncode


@pytest.mark.slow
def test_a_two_variant_ablation_writes_the_comparison_table_results_and_plots(killed_then_resumed):
    out, _, _, _ = killed_then_resumed
    comparison = out / "comparison"
    assert read_manifest(comparison)["stage"] == "ablation"
    results = json.loads((comparison / "results.json").read_text())
    assert results["base"] == "default" and set(results["variants"]) == {"default", "no_dedup"}
    no_dedup = results["variants"]["no_dedup"]
    assert no_dedup["trained_tokens"] == results["variants"]["default"]["trained_tokens"]
    assert no_dedup["documents"] > results["variants"]["default"]["documents"]  # duplicates kept
    # The sample's exact copies at a second URL: dedup keeps none of a held-out page's copies.
    assert results["variants"]["default"]["heldout_copies"] == 0
    assert no_dedup["heldout_copies"] > 0
    bpb = no_dedup["metrics"]["val_bpb"]
    assert bpb["n"] == 1 and bpb["verdict"] == NO_SPREAD and bpb["diff"] is not None
    assert no_dedup["metrics"]["blimp_acc"]["stderr"] is not None
    table = (comparison / "table.md").read_text()
    assert "| **default** |" in table and "| no_dedup |" in table
    for plot in ("heldout_val_bpb.png", "scores.png"):
        assert (comparison / plot).stat().st_size > 0
    curve = json.loads((out / "variants" / "no_dedup" / "curve-seed0.json").read_text())["points"]
    assert [point["step"] for point in curve] == [4, 8]


@pytest.mark.slow
def test_mlflow_holds_the_ablation_run_a_child_per_variant_and_stage_runs(killed_then_resumed):
    out, _, _, _ = killed_then_resumed
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lmforge").experiment_id
    parent = client.search_runs([experiment], "tags.`lmforge.stage` = 'ablation'",
                                order_by=["attributes.start_time DESC"])[0]  # fmt: skip
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/table.md", "comparison/results.json",
            "comparison/heldout_val_bpb.png"} <= artifacts  # fmt: skip
    assert "no_dedup/val_bpb_diff" in parent.data.metrics
    variants = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    by_name = {run.data.tags["lmforge.ablation.variant"]: run for run in variants}
    assert set(by_name) == {"default", "no_dedup"}
    no_dedup = by_name["no_dedup"]
    assert no_dedup.data.params["data.dedup"] == "False"
    assert {"documents", "seed0/val_bpb", "curve/seed0/val_bpb", "mean/val_bpb"} <= set(
        no_dedup.data.metrics
    )
    assert no_dedup.data.tags["lmforge.ablation.verdict"] == NO_SPREAD
    stages = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{no_dedup.info.run_id}'"
    )
    assert {run.data.tags["lmforge.stage"] for run in stages} == {
        "data_refresh", "build_shards", "pretrain", "evaluate",
    }  # fmt: skip


@pytest.mark.slow
def test_a_killed_ablation_resumes_without_rerunning_the_finished_variant(killed_then_resumed):
    out, kept, was_complete, killed_with = killed_then_resumed
    assert killed_with == -signal.SIGKILL and not was_complete  # it was cut short
    base = out / "variants" / "default"
    for name, mtime in kept.items():
        assert (base / name / "manifest.json").stat().st_mtime_ns == mtime, name
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lmforge").experiment_id
    rerun = client.search_runs(
        [experiment], "tags.`lmforge.stage` = 'ablation_variant' and "
        "tags.`lmforge.ablation.variant` = 'default'", order_by=["attributes.start_time DESC"],
    )[0]  # fmt: skip
    assert set(rerun.data.tags["lmforge.cached_stages"].split(",")) == {
        "data_refresh", "build_shards", "pretrain-seed0", "evaluate-seed0",
    }  # fmt: skip
    reused = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{rerun.info.run_id}'")
    assert len(reused) == 4 and all(run.data.tags["lmforge.cache"] == "hit" for run in reused)


@pytest.mark.slow
def test_variants_differing_in_a_late_filter_reuse_the_bases_early_work(killed_then_resumed):
    out, _, _, _ = killed_then_resumed
    base = read_manifest(out / "variants" / "default" / "data")["counts"]
    variant = read_manifest(out / "variants" / "no_dedup" / "data")["counts"]
    assert base["extraction_cache_hits"] == 0  # the base refresh did the early work
    assert variant["extraction_cache_hits"] == variant["warc_files"] == 2
    assert variant["responses"] == base["responses"]
