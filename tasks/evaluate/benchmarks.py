"""Benchmarks scored by log-likelihood, zero- or few-shot, with lm-eval's metrics.

Multiple-choice tasks (HellaSwag, ARC, PIQA): the prediction is the choice whose continuation
has the highest total log-probability (`acc`), or the highest per character of the choice
(`acc_norm`, lm-eval's length normalisation). LAMBADA: the last word is right when every one
of its tokens is the model's greedy prediction (`acc`); `ppl` is exp(-mean log-likelihood) of
the target. Standard errors are lm-eval's: sqrt(p(1-p)/(n-1)) for accuracies, bootstrap for ppl.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from lmforge.tasks.evaluate.benchmark_formats import BenchmarkItem, benchmark_task
from lmforge.tasks.evaluate.benchmark_sources import DEFAULT_CACHE, fetch_benchmark_file
from lmforge.tasks.evaluate.checkpoint import EvaluationError, continuation_scores
from lmforge.tasks.tokens.tokenizer import special_token_ids, to_valid_utf8

FEWSHOT_DELIMITER = "\n\n"  # between solved examples and before the question, as in lm-eval
BOOTSTRAP_ITERS = 1000


def fewshot_examples(
    pool: Sequence[BenchmarkItem], k: int, seed: int, key: int, exclude: int | None = None
) -> list[BenchmarkItem]:
    """`k` examples drawn from `pool` for question number `key`, never `pool[exclude]` (the
    question itself, when the pool is its own file). The draw depends only on (seed, key), so a
    question's prompt does not change with batch size, limit or the order of scoring."""
    if k == 0:
        return []
    available = len(pool) - (exclude is not None)
    if available < k:
        raise EvaluationError(
            f"{k}-shot prompts need {k} examples but the few-shot pool has {available}"
        )
    drawn = random.Random(f"{seed}:{key}").sample(range(available), k)
    # Skip over the excluded position: indices at or after it shift up by one.
    return [pool[i + (exclude is not None and i >= exclude)] for i in drawn]


def fewshot_prompt(item: BenchmarkItem, examples: Sequence[BenchmarkItem]) -> str:
    """The solved examples (context + right continuation), then the question's context."""
    solved = "".join(e.context + e.continuation(e.gold) + FEWSHOT_DELIMITER for e in examples)
    return solved + item.context


def choice_requests(
    tokenizer: Tokenizer, prompt: str, item: BenchmarkItem, max_length: int | None
) -> list[tuple[list[int], int]]:
    """(token ids, context length) per choice. The prompt follows `<|endoftext|>` (a document
    start, as in training); a sequence longer than the model's context keeps its end."""
    eot_id = special_token_ids(tokenizer).eot_id
    context = [eot_id] + tokenizer.encode(to_valid_utf8(prompt)).ids
    requests = []
    for choice in range(len(item.choices)):
        continuation = tokenizer.encode(to_valid_utf8(item.continuation(choice))).ids
        if not continuation:
            raise EvaluationError(f"choice {item.choices[choice]!r} encodes to no tokens")
        tokens = context + continuation
        cut = max(0, len(tokens) - (max_length + 1)) if max_length else 0
        if cut >= len(context):
            raise EvaluationError(
                f"choice {item.choices[choice][:40]!r} alone is longer than the model's "
                f"context of {max_length} tokens"
            )
        requests.append((tokens[cut:], len(context) - cut))
    return requests


def binomial_stderr(hits: Sequence[bool]) -> float:
    """lm-eval's standard error of a mean of 0/1 outcomes: sqrt(p(1-p)/(n-1))."""
    n = len(hits)
    if n < 2:
        return float("nan")
    p = sum(hits) / n
    return math.sqrt(p * (1 - p) / (n - 1))


def bootstrap_perplexity_stderr(log_likelihoods: np.ndarray, seed: int) -> float:
    """Standard deviation of exp(-mean ll) over resamples of the items (lm-eval bootstraps ppl)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(log_likelihoods), size=(BOOTSTRAP_ITERS, len(log_likelihoods)))
    return float(np.exp(-log_likelihoods[draws].mean(axis=1)).std(ddof=1))


def multiple_choice_metrics(
    items: Sequence[BenchmarkItem], log_likelihoods: Sequence[Sequence[float]]
) -> dict[str, float]:
    """acc and acc_norm (log-likelihood per character of the choice) with standard errors."""
    hits, norm_hits = [], []
    for item, lls in zip(items, log_likelihoods, strict=True):
        lls = np.asarray(lls)
        lengths = np.array([max(len(choice), 1) for choice in item.choices], dtype=float)
        hits.append(int(np.argmax(lls)) == item.gold)
        norm_hits.append(int(np.argmax(lls / lengths)) == item.gold)
    return {
        "acc": float(np.mean(hits)),
        "acc_stderr": binomial_stderr(hits),
        "acc_norm": float(np.mean(norm_hits)),
        "acc_norm_stderr": binomial_stderr(norm_hits),
    }


def last_word_metrics(scores: Sequence[tuple[float, bool]], seed: int) -> dict[str, float]:
    """acc (the target is the greedy continuation) and ppl of the target, with standard errors."""
    lls = np.array([log_prob for log_prob, _ in scores])
    hits = [greedy for _, greedy in scores]
    return {
        "acc": float(np.mean(hits)),
        "acc_stderr": binomial_stderr(hits),
        "ppl": float(np.exp(-lls.mean())),
        "ppl_stderr": bootstrap_perplexity_stderr(lls, seed),
    }


def score_items(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[BenchmarkItem],
    *,
    kind: str = "multiple_choice",
    num_fewshot: int = 0,
    fewshot_pool: Sequence[BenchmarkItem] | None = None,
    seed: int = 1234,
    limit: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
) -> dict[str, float]:
    """Score the first `limit` (default: all) of `items` (kind `multiple_choice` or
    `last_word`); few-shot examples come from `fewshot_pool`, or else from all of `items`
    except the question being asked. Returns the task's metrics plus `n` and `num_fewshot`."""
    same_file = fewshot_pool is None
    pool = items if same_file else fewshot_pool
    items = items[:limit]
    if not items:
        raise EvaluationError("no benchmark items to score")
    requests: list[tuple[list[int], int]] = []
    for key, item in enumerate(items):
        shots = fewshot_examples(pool, num_fewshot, seed, key, key if same_file else None)
        requests += choice_requests(tokenizer, fewshot_prompt(item, shots), item, max_length)
    pad_id = special_token_ids(tokenizer).pad_id
    scores = continuation_scores(
        model, [r[0] for r in requests], [r[1] for r in requests], pad_id, batch_size
    )
    if kind == "last_word":
        metrics = last_word_metrics(scores, seed)
    else:
        per_item, start = [], 0
        for item in items:
            per_item.append([ll for ll, _ in scores[start : start + len(item.choices)]])
            start += len(item.choices)
        metrics = multiple_choice_metrics(items, per_item)
    return {**metrics, "n": len(items), "num_fewshot": num_fewshot}


def evaluate_benchmarks(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    sources: Mapping[str, str],
    *,
    num_fewshot: int = 0,
    fewshot_sources: Mapping[str, str] | None = None,
    seed: int = 1234,
    limit: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    cache_dir: str | Path = DEFAULT_CACHE,
) -> dict[str, dict[str, Any]]:
    """Task name -> metrics, for each `name: path or URL` in `sources` (see
    `benchmark_formats.TASKS`). `fewshot_sources` names a train/validation file per task to draw
    examples from (default: the task's own file, without the question). `limit` scores the
    first N questions. Raises ValueError for an unknown task, FileNotFoundError for a missing
    file or failed download, BenchmarkFormatError for a file not in the task's format."""
    results = {}
    for name, source in sources.items():
        task = benchmark_task(name)
        items = task.load(fetch_benchmark_file(source, cache_dir, task.sidecars))
        pool_source = (fewshot_sources or {}).get(name)
        pool = (
            task.load(fetch_benchmark_file(pool_source, cache_dir, task.sidecars))
            if pool_source and num_fewshot
            else None
        )
        results[name] = score_items(
            model,
            tokenizer,
            items,
            kind=task.kind,
            num_fewshot=num_fewshot,
            fewshot_pool=pool,
            seed=seed,
            limit=limit,
            batch_size=batch_size,
            max_length=max_length,
        )
        results[name]["source"] = source
    return results


def benchmark_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Flat MLflow metric names: `hellaswag.acc`, `hellaswag.acc_norm_stderr`, `lambada.ppl`."""
    return {
        f"{task}.{metric}": float(value)
        for task, metrics in results.items()
        for metric, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and metric != "num_fewshot"
    }


def results_table(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per task and metric (value, stderr), for tables in MLflow and Prefect."""
    rows = []
    for task, metrics in results.items():
        for metric in ("acc", "acc_norm", "ppl"):
            if metric in metrics:
                rows.append(
                    {
                        "task": task,
                        "metric": metric,
                        "value": round(float(metrics[metric]), 4),
                        "stderr": finite_or_none(metrics.get(f"{metric}_stderr")),
                        "n": metrics["n"],
                        "num_fewshot": metrics["num_fewshot"],
                    }
                )
    return rows


def finite_or_none(value: float | None) -> float | None:
    """A rounded number, or None where there is none (JSON has no NaN): one item has no stderr."""
    return round(float(value), 4) if value is not None and math.isfinite(value) else None


def results_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results table as markdown."""
    header = "| task | metric | value | ± stderr | n | shots |\n|---|---|---|---|---|---|\n"
    return header + "".join(
        f"| {r['task']} | {r['metric']} | {r['value']:.4f} | "
        f"{'-' if r['stderr'] is None else format(r['stderr'], '.4f')} | {r['n']} "
        f"| {r['num_fewshot']} |\n"
        for r in rows
    )
