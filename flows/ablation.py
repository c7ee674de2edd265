"""`ablation`: which data makes a better model. The loop FineWeb and DCLM ran with scripts outside
their pipelines, as one flow: every variant of the data stage refreshed and sharded with one
tokenizer, the same model trained on each for the same tokens once per seed, every model scored
on one held-out set, and each variant compared with the base against the seed-to-seed spread.

Layout of `run.out`:

    sample/                   the built-in WARC sample, when no input is given
    cache/extraction/         early per-file work every refresh shares (extraction_cache)
    heldout/                  a user's held-out set as shards (ablation.heldout)
    variants/<name>/          data/, shards/, train-seedK/, eval-seedK/, curve-seedK.json
    comparison/               table.md, results.json, heldout_bpb.png, scores.png (+ manifest)
    config.yaml, mlflow.db

The base variant goes first: its shards train the tokenizer every other variant reuses, and its
val split (documents chosen by a hash of their id, so no variant trains on one) is the default
held-out set. The other variants wait for its dataset (the early per-file work is then cached)
and its shards, and `run.parallel` variants run at once, each training in its own process.
Every stage is reused when its finished output matches (`stage_outputs.run_or_reuse`), so a killed
ablation, run again, continues where it stopped.

MLflow: the ablation's run; below it a run per variant (its config, data counts, held-out curves,
scores and verdict); below each variant its stage runs, nested as the pipeline nests them.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lmforge.flows.build_shards import build_shards
from lmforge.flows.data_refresh import data_refresh
from lmforge.flows.evaluate import evaluate
from lmforge.flows.params import AblationRun, DataRefreshRun, EvalRun, PretrainRun, ShardsRun
from lmforge.flows.pipeline import data_inputs
from lmforge.flows.stage_outputs import run_or_reuse
from lmforge.flows.preflight import check_evaluation_files
from lmforge.flows.pretrain import pretrain
from lmforge.flows.reports import mlflow_run_markdown, publish_markdown
from lmforge.flows.runners import default_workers
from lmforge.flows.stage_cache import StageCache, code_version, stage_key
from lmforge.flows.stage_flow import StageFlow
from lmforge.flows.tracking import configure_tracking, numeric_metrics, section_values, stage_run
from lmforge.manifest import claim_output_dir, describe_input, read_manifest, stage_output
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.model.train import TrainConfig
from lmforge.tasks import plots
from lmforge.tasks.ablation.compare import (
    PRIMARY_METRIC,
    compare_variants,
    comparison_json,
    comparison_markdown,
    seed_scores,
    verdict_lines,
)
from lmforge.tasks.ablation.config import AblationConfig, BaseSections
from lmforge.tasks.ablation.curve import heldout_curve
from lmforge.tasks.ablation.heldout import check_heldout, heldout_documents, write_heldout_shards
from lmforge.tasks.ablation.overlap import heldout_copies, split_digests, text_digest
from lmforge.tasks.data.config import DataConfig
from lmforge.tasks.data.sample.corpus import build_sample_corpus
from lmforge.tasks.evaluate.blimp import load_blimp
from lmforge.tasks.tokens.shards import ShardConfig
from lmforge.tracking_tags import CACHED_STAGES_TAG, CODE_VERSION_TAG

STAGE = "ablation"
VARIANT_STAGE = "ablation_variant"  # the `lmforge.stage` tag of a variant's MLflow run
VARIANT_TAG = "lmforge.ablation.variant"  # the variant's name, on its run
VERDICT_TAG = "lmforge.ablation.verdict"  # its verdict on the primary metric, against the base
COMPARISON_DIR = "comparison"
# A variant's data counts, as its run's metrics and the comparison's columns.
COUNTS = ("responses", "documents", "train_documents", "train_tokens", "trained_tokens", "epochs")


@dataclass(frozen=True)
class SeedPlan:
    """One training seed of a variant: its training config and the folders it writes."""

    seed: int
    train: TrainConfig
    train_run: PretrainRun
    eval_run: EvalRun
    curve: Path  # the held-out curve's record

    @property
    def label(self) -> str:
        return f"seed{self.seed}"


@dataclass(frozen=True)
class VariantPlan:
    """What one variant runs, and where: its data and shard configs, then a plan per seed."""

    name: str
    root: Path
    is_base: bool
    data: DataConfig
    shards: ShardConfig
    data_run: DataRefreshRun
    shards_run: ShardsRun
    seeds: tuple[SeedPlan, ...]


class BaseVariantFailed(RuntimeError):
    """The base variant failed, so the others have no tokenizer (or held-out set) to use."""


class VariantsFailed(RuntimeError):
    """Variants that failed; the others finished, and a rerun reuses what they made."""


# Each running ablation's gate, by its MLflow run id. Not a task parameter: a task's parameters
# travel with its context to the process pool of a nested data refresh, and locks do not pickle.
_GATES: dict[str, BaseVariantGate] = {}


class BaseVariantGate:
    """What the other variants wait for: the base's dataset (its refresh filled the extraction
    cache they reuse) and its shards (the tokenizer and held-out set). A failed base releases
    every waiter with BaseVariantFailed instead of leaving them blocked."""

    MILESTONES = ("data", "shards")

    def __init__(self) -> None:
        self._events = {milestone: threading.Event() for milestone in self.MILESTONES}
        self._reached: set[str] = set()
        self._error: BaseException | None = None

    def reached(self, milestone: str) -> None:
        self._reached.add(milestone)
        self._events[milestone].set()

    def failed(self, error: BaseException) -> None:
        self._error = error
        for event in self._events.values():
            event.set()

    def wait(self, milestone: str, variant: str) -> None:
        self._events[milestone].wait()
        if milestone not in self._reached:
            raise BaseVariantFailed(
                f"variant {variant!r} stopped: the base variant failed before its {milestone} "
                f"was ready ({self._error})"
            )


def seed_train_config(train: TrainConfig, seed: int, keep_every_checkpoint: bool) -> TrainConfig:
    """The base's training config for one seed, as the ablation runs it: resumable, without a
    terminal progress bar (variants train side by side), keeping every checkpoint for the
    held-out curve when there is one."""
    checkpoints = math.ceil(train.max_steps / train.checkpoint_every)
    keep = max(train.keep_checkpoints, checkpoints) if keep_every_checkpoint else None
    return train.model_copy(
        update={
            "seed": seed,
            "resume": True,
            "progress": False,
            "keep_checkpoints": keep or train.keep_checkpoints,
        }
    )


def plan_variants(
    ablation: AblationConfig, run: AblationRun, out: Path, warcs: list[str], heldout: Path
) -> list[VariantPlan]:
    """Every variant's stages and folders, the base first; `heldout` is the shards folder whose
    val split every model is scored on."""
    base = ablation.base_sections()
    tokenizer = out / "variants" / ablation.base_name / "shards" / TOKENIZER_FILE
    plans = []
    for name, sections in ablation.variant_sections().items():
        root = out / "variants" / name
        is_base = name == ablation.base_name
        shards = sections.shards
        if not is_base:  # one vocabulary for every variant, so their losses compare
            shards = shards.model_copy(update={"tokenizer_path": str(tokenizer)})
        seeds = tuple(
            SeedPlan(
                seed=seed,
                train=seed_train_config(base.train, seed, ablation.curve_tokens > 0),
                train_run=PretrainRun(
                    shards=str(root / "shards"), out=str(root / f"train-seed{seed}"),
                    register_model=False, model_alias=None,
                    # its own process: variants side by side share no interpreter
                    isolate=True,
                ),  # fmt: skip
                eval_run=EvalRun(
                    checkpoint=str(root / f"train-seed{seed}"), shards=str(heldout),
                    out=str(root / f"eval-seed{seed}"), blimp=run.blimp,
                ),  # fmt: skip
                curve=root / f"curve-seed{seed}.json",
            )
            for seed in ablation.seeds
        )
        plans.append(
            VariantPlan(
                name=name,
                root=root,
                is_base=is_base,
                data=sections.data,
                shards=shards,
                data_run=DataRefreshRun(
                    input=warcs, out=str(root / "data"), workers=run.workers, runner=run.runner,
                    dask_address=run.dask_address,
                    # one folder: a file's read, extraction and language ID are done once
                    extraction_cache=str(out / "cache" / "extraction"),
                ),  # fmt: skip
                shards_run=ShardsRun(data=str(root / "data"), out=str(root / "shards")),
                seeds=seeds,
            )
        )
    return plans


def warc_inputs(run: AblationRun, out: Path) -> list[str]:
    """The user's WARC files, or the built-in sample, built once in `out/sample` and shared by
    every variant (built aside and renamed, so a folder found there is whole)."""
    if run.input:
        return list(run.input)
    sample = out / "sample"
    if not sample.is_dir():
        partial = out / ".sample.tmp"
        build_sample_corpus(partial)
        partial.rename(sample)
    return [str(path) for path in sorted(sample.glob("sample-*.warc.gz"))]


@contextlib.contextmanager
def training_threads(run: AblationRun) -> Iterator[int]:
    """OMP_NUM_THREADS for the training processes started meanwhile: `run.train_threads`, else
    the one set already, else the cores divided among the variants that run at once, so that
    parallel trainings do not oversubscribe the machine."""
    previous = os.environ.get("OMP_NUM_THREADS")
    if run.train_threads:
        threads = run.train_threads
    elif previous and previous.isdigit():
        threads = int(previous)
    else:
        threads = max(1, default_workers() // run.parallel)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield threads
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def check_ablation_inputs(ablation: AblationConfig, run: AblationRun) -> None:
    """Before the flow starts: the BLiMP folder, local benchmark files and the held-out set."""
    check_evaluation_files(ablation.base_sections().eval, run.blimp)
    if ablation.heldout:
        check_heldout(ablation.heldout)


@task(name="heldout-shards", cache_policy=NO_CACHE, persist_result=False)
def heldout_shards_task(source: str, tokenizer: Path, out: Path) -> str:
    """The user's held-out set tokenized with the base tokenizer into `out`, reused when made
    from the same files and tokenizer."""
    cache = StageCache(out.parent)
    inputs = [describe_input(source), describe_input(tokenizer)]
    key = stage_key("heldout", {"heldout": source}, inputs)
    if cache.lookup("heldout", key, out) is None:
        write_heldout_shards(source, tokenizer, out)
        cache.store("heldout", key, out)
    return str(out)


@task(name="heldout-curve", task_run_name="held-out curve {seed.label}", cache_policy=NO_CACHE,
      persist_result=False)  # fmt: skip
def heldout_curve_task(seed: SeedPlan, base: BaseSections, tokens: int) -> list[dict[str, float]]:
    """Every checkpoint of the seed's training scored on `tokens` held-out tokens; recorded
    beside the training output and reused while training output and held-out set are the
    same."""
    evaluation = base.eval
    params = {"tokens": tokens, "batch_size": evaluation.batch_size,
              "seq_len": evaluation.seq_len, "device": evaluation.device}  # fmt: skip
    inputs = [describe_input(seed.train_run.out), describe_input(seed.eval_run.shards)]
    key = stage_key("heldout_curve", params, inputs)
    if seed.curve.is_file():
        record = json.loads(seed.curve.read_text())
        if record.get("key") == key:
            return record["points"]
    points = heldout_curve(
        seed.train_run.out, seed.eval_run.shards, tokens, evaluation.batch_size,
        evaluation.seq_len, evaluation.device,
    )  # fmt: skip
    partial = seed.curve.with_name(f".{seed.curve.name}.partial")
    partial.write_text(json.dumps({"key": key, "points": points}, indent=2))
    partial.replace(seed.curve)
    return points


def variant_params(plan: VariantPlan, base: BaseSections, seeds: list[int]) -> dict[str, Any]:
    """A variant run's params: its whole configuration, the shared sections included."""
    sections = {"data": plan.data, "shards": plan.shards, "model": base.model,
                "train": base.train, "eval": base.eval}  # fmt: skip
    return {
        "variant": {"name": plan.name, "base": plan.is_base, "seeds": seeds},
        **section_values(sections),
        "run": {"out": str(plan.root)},  # names the run `ablation_variant <name>`
    }


def variant_task(
    plan: VariantPlan,
    ablation: AblationConfig,
    parent_run_id: str,
    heldout_source: Path | None,
) -> dict[str, Any]:
    """One variant in its MLflow run, a child of `parent_run_id`; the base releases the run's
    gate (`_GATES`) as its dataset and shards are ready, the others wait for it. Runs in a
    plain thread with the flow's context, not as a Prefect task: a task's context travels with
    the per-file work of a nested refresh to the process pool, and cannot be pickled there."""
    gate = _GATES[parent_run_id]
    base = ablation.base_sections()
    params = variant_params(plan, base, ablation.seeds)
    try:
        with stage_run(VARIANT_STAGE, params, parent_run_id) as mlflow_run:
            mlflow.set_tag(VARIANT_TAG, plan.name)
            mlflow.log_dict(params, "variant.json")
            return run_variant(plan, ablation, mlflow_run.info.run_id, gate, heldout_source)
    except BaseException as error:
        if plan.is_base:
            gate.failed(error)
        raise


def run_variant(
    plan: VariantPlan,
    ablation: AblationConfig,
    run_id: str,
    gate: BaseVariantGate,
    heldout_source: Path | None,
) -> dict[str, Any]:
    """data_refresh -> build_shards -> per seed pretrain -> evaluate (and the held-out curve),
    each reused when finished before; logs the variant's counts, curves and scores into the
    active run (`run_id`) and returns them."""
    base = ablation.base_sections()
    cache = StageCache(plan.root)
    stages: dict[str, str] = {}
    if not plan.is_base and getattr(plan.data_run, "extraction_cache", None):
        gate.wait("data", plan.name)
    stages["data_refresh"] = run_or_reuse(
        "data_refresh", data_refresh, {"data": plan.data, "run": plan.data_run},
        plan.data_run.out, data_inputs(plan.data_run), cache, run_id,
    )  # fmt: skip
    if plan.is_base:
        gate.reached("data")
    else:
        gate.wait("shards", plan.name)
    stages["build_shards"] = run_or_reuse(
        "build_shards", build_shards, {"shards": plan.shards, "run": plan.shards_run},
        plan.shards_run.out, [describe_input(plan.shards_run.data)], cache, run_id,
    )  # fmt: skip
    if plan.is_base:
        if heldout_source is not None:
            tokenizer = Path(plan.shards_run.out) / TOKENIZER_FILE
            heldout = Path(plan.seeds[0].eval_run.shards)
            heldout_shards_task(str(heldout_source), tokenizer, heldout)
        gate.reached("shards")
    seeds: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    for seed in plan.seeds:
        label = seed.label
        stages[f"pretrain-{label}"] = run_or_reuse(
            "pretrain", pretrain,
            {"model": base.model, "train": seed.train, "run": seed.train_run}, seed.train_run.out,
            [describe_input(seed.train_run.shards)], cache, run_id, record=f"pretrain-{label}",
        )  # fmt: skip
        eval_run = seed.eval_run
        stages[f"evaluate-{label}"] = run_or_reuse(
            "evaluate", evaluate, {"eval": base.eval, "run": eval_run}, str(eval_run.out),
            [describe_input(eval_run.checkpoint), describe_input(eval_run.shards)], cache, run_id,
            record=f"evaluate-{label}",
        )  # fmt: skip
        results = json.loads((Path(str(eval_run.out)) / "results.json").read_text())
        seeds[label] = {key: value for key, value in results.items() if key != "samples"}
        if ablation.curve_tokens:
            curves[label] = heldout_curve_task(seed, base, ablation.curve_tokens)
    summary = variant_summary(plan, stages, seeds, curves)
    log_variant(summary)
    return {**summary, "run_id": run_id}


def variant_summary(
    plan: VariantPlan,
    stages: Mapping[str, str],
    seeds: Mapping[str, dict[str, Any]],
    curves: Mapping[str, list[dict[str, float]]],
) -> dict[str, Any]:
    """What the comparison needs of a variant: data counts, the tokens trained on, every
    seed's evaluation and held-out curve, and which stages ran or were reused."""
    data = read_manifest(plan.data_run.out)["counts"]
    split = read_manifest(plan.shards_run.out)["splits"]["train"]
    trained = [read_manifest(seed.train_run.out)["counts"]["tokens"] for seed in plan.seeds]
    return {
        "name": plan.name,
        "responses": data.get("responses"),
        "documents": data.get("kept"),
        "train_documents": split["documents"],
        "train_tokens": split["tokens"],
        "trained_tokens": trained[0],
        "epochs": round(trained[0] / split["tokens"], 3) if split["tokens"] else None,
        "stages": dict(stages),
        "seeds": dict(seeds),
        "curves": dict(curves),
    }


def log_variant(summary: Mapping[str, Any]) -> None:
    """Into the active variant run: data counts, each seed's scores (`seed0/val_bpb`), their
    held-out curves against tokens (`curve/seed0/val_bpb`, step = tokens) and the stages the
    stage cache supplied."""
    counts = {key: summary[key] for key in COUNTS}
    mlflow.log_metrics({k: float(v) for k, v in counts.items() if v is not None})
    for label, results in summary["seeds"].items():
        mlflow.log_metrics(numeric_metrics(results, prefix=f"{label}/"))
    for label, points in summary["curves"].items():
        for point in points:
            step = int(point["tokens"])
            for metric in ("val_loss", "val_bpb"):
                mlflow.log_metric(f"curve/{label}/{metric}", point[metric], step=step)
    cached = [stage for stage, outcome in summary["stages"].items() if outcome == "cached"]
    mlflow.set_tag(CACHED_STAGES_TAG, ",".join(cached))


@task(name="heldout-copies", cache_policy=NO_CACHE, persist_result=False)
def heldout_copies_task(
    plans: list[VariantPlan], val_fraction: float, heldout_source: Path | None
) -> dict[str, int]:
    """Per variant, its train documents whose text is a held-out document's (`overlap`)."""
    base = next(plan for plan in plans if plan.is_base)
    if heldout_source is None:
        held = split_digests(base.data_run.out, val_fraction, "val")
    else:
        held = [text_digest(t) for _, texts, _ in heldout_documents(heldout_source) for t in texts]
    return {
        plan.name: heldout_copies(held, split_digests(plan.data_run.out, val_fraction, "train"))
        for plan in plans
    }


def finished_variants(plans: list[VariantPlan], futures: list[Any]) -> dict[str, dict[str, Any]]:
    """Each variant's summary once all have ended; VariantsFailed naming every variant that
    failed and why (a failed base fails the others too: they need its tokenizer)."""
    summaries, failures = {}, {}
    for plan, future in zip(plans, futures, strict=True):
        try:
            summaries[plan.name] = future.result()
        except Exception as error:  # noqa: BLE001 - reported together below
            failures[plan.name] = error
    if failures:
        listed = "; ".join(f"{name}: {error}" for name, error in failures.items())
        raise VariantsFailed(
            f"{len(failures)} of {len(plans)} variants failed ({listed}); the finished stages "
            "are kept and reused when the ablation runs again"
        )
    return summaries


def blimp_pair_counts(blimp: str | None, max_pairs: int | None) -> dict[str, int] | None:
    """Pairs scored per BLiMP paradigm (for the score's standard error); None without BLiMP."""
    if not blimp:
        return None
    return {name: len(pairs[:max_pairs] if max_pairs else pairs)
            for name, pairs in load_blimp(blimp).items()}  # fmt: skip


def compare(
    summaries: Mapping[str, Mapping[str, Any]],
    ablation: AblationConfig,
    blimp_pairs: Any,
    copies: Mapping[str, int],
) -> dict[str, Any]:
    """The comparison of every variant with the base (`compare.comparison_json`), with each
    variant's data counts, held-out copies in its train split and per-seed scores."""
    scores = {
        name: [seed_scores(results, blimp_pairs) for results in summary["seeds"].values()]
        for name, summary in summaries.items()
    }
    extra: dict[str, dict[str, Any]] = {}
    for name, summary in summaries.items():
        extra[name] = {key: summary[key] for key in (*COUNTS, "stages")}
        extra[name]["heldout_copies"] = copies[name]
        extra[name]["seeds"] = {
            label: {metric: score.value for metric, score in seed.items()}
            for label, seed in zip(summary["seeds"], scores[name], strict=True)
        }
    return comparison_json(compare_variants(scores, ablation.base_name), ablation.base_name, extra)


def write_comparison(
    comparison: Mapping[str, Any],
    summaries: Mapping[str, Mapping[str, Any]],
    out: Path,
    params: dict[str, Any],
    inputs: list[str],
) -> Path:
    """`out/comparison/`: table.md, results.json, the held-out curves and the score bars, as a
    stage output (written aside, renamed when whole, with a manifest of the evaluations read)."""
    with stage_output(out / COMPARISON_DIR, STAGE, params, inputs=inputs) as output:
        (output.path / "table.md").write_text(comparison_markdown(comparison))
        (output.path / "results.json").write_text(json.dumps(comparison, indent=2))
        curves = {name: list(summary["curves"].values()) for name, summary in summaries.items()}
        if any(curves.values()):
            plots.ablation_curves(curves, output.path / f"heldout_{PRIMARY_METRIC}.png",
                                  PRIMARY_METRIC)  # fmt: skip
        bars = score_bars(comparison)
        if bars:
            plots.ablation_scores(bars, output.path / "scores.png")
        output.counts.update(variants=len(summaries))
    return out / COMPARISON_DIR


def score_bars(comparison: Mapping[str, Any]) -> dict[str, dict[str, tuple[float, float | None]]]:
    """metric -> variant -> (mean, standard error) of the scores that have a standard error
    (BLiMP, benchmarks)."""
    bars: dict[str, dict[str, tuple[float, float | None]]] = {}
    for name, variant in comparison["variants"].items():
        for metric, row in variant["metrics"].items():
            if row.get("stderr") is not None:
                bars.setdefault(metric, {})[name] = (row["mean"], row["stderr"])
    return bars


def log_comparison(
    comparison: Mapping[str, Any], folder: Path, summaries: Mapping[str, Any]
) -> None:
    """Into the ablation's active run: the comparison folder as artifacts and each variant's
    means and differences as metrics (`raw/val_bpb`, `raw/val_bpb_diff`); onto each variant's
    run its verdict on the primary metric and its means."""
    mlflow.log_artifacts(str(folder), artifact_path=COMPARISON_DIR)
    client = MlflowClient()
    for name, variant in comparison["variants"].items():
        means = {metric: row["mean"] for metric, row in variant["metrics"].items()}
        diffs = {f"{metric}_diff": row["diff"] for metric, row in variant["metrics"].items()
                 if row["diff"] is not None}  # fmt: skip
        mlflow.log_metrics({f"{name}/{key}": value for key, value in {**means, **diffs}.items()})
        run_id = summaries[name]["run_id"]
        for metric, value in means.items():
            client.log_metric(run_id, f"mean/{metric}", value)
        client.log_metric(run_id, "heldout_copies", variant["heldout_copies"])
        primary = variant["metrics"].get(PRIMARY_METRIC)
        if primary is not None:
            client.set_tag(run_id, VERDICT_TAG, primary["verdict"])


# Marks a folder as an ablation's, from its first start: a rerun continues in it, while a
# user's folder (not empty, no marker) is refused before anything is written.
ABLATION_MARKER = ".lmforge-ablation"


def claim_ablation_dir(out: Path) -> Path:
    """`out`, claimed for this ablation before any work (OutputRefused for a user's folder)."""
    if not (out / ABLATION_MARKER).is_file():
        claim_output_dir(out, STAGE)
    out.mkdir(parents=True, exist_ok=True)
    (out / ABLATION_MARKER).touch()
    return out


@flow(name="ablation", log_prints=True)
def ablate(ablation: AblationConfig = AblationConfig(), run: AblationRun = AblationRun()) -> dict:
    """Train the same model on each data variant and compare them on one held-out set.

    `ablation` is the base recipe, the variants of its data stage, the seeds and the held-out
    set; `run` what goes in, where it goes, and how many variants run at once."""
    out = claim_ablation_dir(Path(run.out).resolve())
    tracking_uri = configure_tracking(out)  # the ablation's store: its variants log there
    blimp_pairs = blimp_pair_counts(run.blimp, ablation.base_sections().eval.blimp_max_pairs)
    warcs = warc_inputs(run, out)
    heldout_source = Path(ablation.heldout).resolve() if ablation.heldout else None
    base_shards = out / "variants" / ablation.base_name / "shards"
    heldout = out / "heldout" if heldout_source is not None else base_shards
    plans = plan_variants(ablation, run, out, warcs, heldout)
    stage = StageFlow.start(STAGE, {"ablation": ablation, "run": run}, out)
    gate = BaseVariantGate()
    with (
        stage.mlflow_run(tags={CODE_VERSION_TAG: code_version()}) as mlflow_run,
        training_threads(run) as threads,
        ThreadPoolExecutor(max_workers=run.parallel) as pool,
    ):
        stage.record_config()
        parent = mlflow_run.info.run_id
        _GATES[parent] = gate
        mlflow.log_params({"training_threads": threads, "variants": len(plans)})
        print(f"ablation: {len(plans)} variants x {len(ablation.seeds)} seeds, {run.parallel} "
              f"at once, {threads} torch threads per training -> {out}")  # fmt: skip
        # The base first: a runner's pool starts work in the order it was given.
        futures = [
            pool.submit(contextvars.copy_context().run, variant_task, plan, ablation, parent,
                        heldout_source)  # fmt: skip
            for plan in plans
        ]
        try:
            summaries = finished_variants(plans, futures)
        finally:
            del _GATES[parent]
        val_fraction = ablation.base_sections().shards.val_fraction
        copies = heldout_copies_task(plans, val_fraction, heldout_source)
        comparison = compare(summaries, ablation, blimp_pairs, copies)
        evaluations = [str(seed.eval_run.out) for plan in plans for seed in plan.seeds]
        folder = write_comparison(
            comparison, summaries, out, section_values(stage.sections), evaluations
        )
        log_comparison(comparison, folder, summaries)
        experiment_id = mlflow_run.info.experiment_id
    verdicts = verdict_lines(comparison)
    table = comparison_markdown(comparison)
    publish_markdown(
        "ablation-summary",
        "# lmforge ablation\n\n"
        f"MLflow run: {mlflow_run_markdown(tracking_uri, experiment_id, parent)}\n\n"
        f"Held-out set: `{heldout}`; seeds {ablation.seeds}; primary metric {PRIMARY_METRIC} "
        "(lower is better). A difference is called better or worse only beyond 2x the pooled "
        "seed-to-seed standard deviation, and a benchmark score only beyond 2 standard "
        "errors.\n\n" + table + "\n" + "".join(f"- {line}\n" for line in verdicts),
    )
    print(table + "\n".join(verdicts))
    return {
        "out": str(out),
        "comparison": str(folder),
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_run_id": parent,
        "heldout": str(heldout),
        "verdicts": verdicts,
        "variants": {name: {"stages": s["stages"], "run_id": s["run_id"]}
                     for name, s in summaries.items()},  # fmt: skip
    }
