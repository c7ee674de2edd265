"""Benchmarks: loaders for each published format, downloads, few-shot prompts, and scores checked
against models whose answers are known by construction or by brute force."""

import functools
import http.server
import json
import math
import threading
import zipfile

import pytest
import torch
from model_fixtures import BigramModel

from lmforge.tasks.evaluate.benchmark_formats import (
    BenchmarkFormatError,
    BenchmarkItem,
    benchmark_task,
    load_arc,
    load_hellaswag,
    load_lambada,
    load_piqa,
)
from lmforge.tasks.evaluate.benchmark_sources import fetch_benchmark_file
from lmforge.tasks.evaluate.benchmarks import (
    benchmark_metrics,
    binomial_stderr,
    choice_requests,
    evaluate_benchmarks,
    fewshot_examples,
    fewshot_prompt,
    multiple_choice_metrics,
    results_markdown,
    results_table,
    score_items,
)
from lmforge.tasks.evaluate.checkpoint import continuation_scores
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, special_token_ids, train_tokenizer

RIGHT, WRONG = "alpha beta alpha", "gamma delta gamma"


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"Question: which one?\nAnswer: {RIGHT} {WRONG}", "the passage ends with a word"] * 30
    return train_tokenizer(corpus, TokenizerConfig(vocab_size=300, min_frequency=2))


def model_preferring(tokenizer, text: str, strength: float = 8.0) -> BigramModel:
    """A model that predicts the tokens of `text` (with a leading space) far above the rest."""
    vocab = tokenizer.get_vocab_size()
    table = torch.zeros(vocab, vocab)
    table[:, tokenizer.encode(" " + text).ids] = strength
    return BigramModel(table)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def hellaswag_record(label=0):
    return {
        "ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes.",
        "ctx_b": "then", "ctx": "ignored", "split": "val", "split_type": "indomain",
        "endings": [RIGHT, WRONG, "[header] more", "a [title] b"], "label": label,
    }


def arc_record(answer="A", labels=("A", "B")):
    choices = [{"text": t, "label": lab} for t, lab in zip((RIGHT, WRONG), labels)]
    return {"id": "q1", "question": {"stem": "Which one?", "choices": choices}, "answerKey": answer}


# --- loaders -------------------------------------------------------------------------------------


def test_hellaswag_loader_applies_lm_evals_preprocessing(tmp_path):
    path = write_jsonl(tmp_path / "hellaswag_val.jsonl", [hellaswag_record(label="2")])
    [item] = load_hellaswag(path)
    assert item.context == "Removing ice from car: Then, the man writes. Then"
    assert item.choices == (RIGHT, WRONG, " more", "a. b")
    assert item.gold == 2 and item.continuation(1) == " " + WRONG


def test_arc_loader_maps_letter_and_digit_answer_keys_to_choice_indices(tmp_path):
    path = write_jsonl(
        tmp_path / "ARC-Easy-Test.jsonl", [arc_record("B"), arc_record("1", labels=("1", "2"))]
    )
    items = load_arc(path)
    assert [item.gold for item in items] == [1, 0]
    assert items[0].context == "Question: Which one?\nAnswer:"
    assert items[0].choices == (RIGHT, WRONG)


def test_arc_loader_names_an_answer_key_that_is_no_choice(tmp_path):
    path = write_jsonl(tmp_path / "arc.jsonl", [arc_record("E")])
    with pytest.raises(BenchmarkFormatError, match=r"arc.jsonl:1: answerKey 'E'"):
        load_arc(path)


def test_piqa_loader_reads_answers_from_the_labels_file_beside_it(tmp_path):
    records = [{"goal": "Open a jar", "sol1": RIGHT, "sol2": WRONG}] * 2
    path = write_jsonl(tmp_path / "valid.jsonl", records)
    with pytest.raises(FileNotFoundError, match="valid-labels.lst"):
        load_piqa(path)
    (tmp_path / "valid-labels.lst").write_text("1\n0\n")
    items = load_piqa(path)
    assert [i.gold for i in items] == [1, 0] and items[0].context == "Question: Open a jar\nAnswer:"
    (tmp_path / "valid-labels.lst").write_text("1\n")
    with pytest.raises(BenchmarkFormatError, match="1 labels but"):
        load_piqa(path)


def test_lambada_loader_splits_off_the_last_word(tmp_path):
    path = write_jsonl(tmp_path / "lambada.jsonl", [{"text": "the passage ends with a word\n"}])
    [item] = load_lambada(path)
    assert item.context == "the passage ends with a" and item.choices == ("word",)
    write_jsonl(path, [{"text": "oneword"}])
    with pytest.raises(BenchmarkFormatError, match="lambada.jsonl:1"):
        load_lambada(path)


def test_loaders_name_file_and_line_of_a_malformed_record(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(hellaswag_record()) + "\n{broken\n")
    with pytest.raises(BenchmarkFormatError, match=r"h.jsonl:2: not valid JSON"):
        load_hellaswag(path)
    write_jsonl(path, [{"ctx_a": "x"}])
    with pytest.raises(BenchmarkFormatError, match=r"h.jsonl:1: needs a list field 'endings'"):
        load_hellaswag(path)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match="hellaswag, arc_easy, arc_challenge, piqa, lambada"):
        benchmark_task("mmlu")


# --- downloads -----------------------------------------------------------------------------------


@pytest.fixture
def file_server(tmp_path):
    """A static HTTP server on 127.0.0.1 over tmp_path/site; yields (site dir, base URL)."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls_are_downloaded_with_their_sidecars_once_and_then_served_from_the_cache(
    tmp_path, file_server
):
    site, base = file_server
    write_jsonl(site / "valid.jsonl", [{"goal": "g", "sol1": RIGHT, "sol2": WRONG}])
    (site / "valid-labels.lst").write_text("0\n")
    task = benchmark_task("piqa")
    cache = tmp_path / "cache"
    path = fetch_benchmark_file(f"{base}/valid.jsonl", cache, task.sidecars)
    assert task.load(path)[0].choices == (RIGHT, WRONG)
    (site / "valid.jsonl").unlink()  # a second fetch must not need the server's copy
    assert fetch_benchmark_file(f"{base}/valid.jsonl", cache, task.sidecars) == path
    assert not list(cache.rglob("*.part"))


def test_a_zip_member_is_extracted_from_a_downloaded_archive(tmp_path, file_server):
    site, base = file_server
    with zipfile.ZipFile(site / "ARC.zip", "w") as archive:
        archive.writestr("ARC/ARC-Easy/ARC-Easy-Test.jsonl", json.dumps(arc_record("B")) + "\n")
    path = fetch_benchmark_file(f"{base}/ARC.zip#ARC/ARC-Easy/ARC-Easy-Test.jsonl", tmp_path)
    assert load_arc(path)[0].gold == 1
    with pytest.raises(FileNotFoundError, match="no member 'missing.jsonl'"):
        fetch_benchmark_file(f"{base}/ARC.zip#missing.jsonl", tmp_path)


def test_a_failed_download_or_missing_file_says_what_to_do(tmp_path, file_server):
    _, base = file_server
    with pytest.raises(FileNotFoundError, match="could not download .* pass a local copy"):
        fetch_benchmark_file(f"{base}/absent.jsonl", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fetch_benchmark_file(str(tmp_path / "absent.jsonl"), tmp_path)


# --- few-shot prompts ----------------------------------------------------------------------------


def items_numbered(n):
    return [BenchmarkItem(f"Q{i}?", (f"yes{i}", f"no{i}"), gold=i % 2) for i in range(n)]


def test_fewshot_examples_are_deterministic_never_the_question_and_vary_with_seed():
    pool = items_numbered(6)
    for key in range(6):
        drawn = fewshot_examples(pool, 5, seed=1, key=key, exclude=key)
        assert pool[key] not in drawn and len(set(drawn)) == 5
    assert fewshot_examples(pool, 2, 1, 3, 3) == fewshot_examples(pool, 2, 1, 3, 3)
    draws = {tuple(fewshot_examples(pool, 2, seed, 0, 0)) for seed in range(10)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="need 6 examples but the few-shot pool has 5"):
        fewshot_examples(pool, 6, 1, 0, exclude=0)


def test_fewshot_prompt_puts_solved_examples_before_the_question():
    shots = items_numbered(2)
    question = BenchmarkItem("Question: which?\nAnswer:", ("a", "b"), 0)
    assert fewshot_prompt(question, shots) == (
        "Q0? yes0\n\nQ1? no1\n\nQuestion: which?\nAnswer:"
    )


def test_choice_requests_start_with_endoftext_and_keep_the_end_when_too_long(tokenizer):
    item = BenchmarkItem("Question: which one?\nAnswer:", (RIGHT, WRONG), 0)
    eot = special_token_ids(tokenizer).eot_id
    [(tokens, context), _] = choice_requests(tokenizer, item.context, item, max_length=None)
    continuation = tokenizer.encode(" " + RIGHT).ids
    assert tokens[0] == eot and tokens[context:] == continuation
    [(cut, cut_context), _] = choice_requests(tokenizer, item.context, item, max_length=6)
    assert len(cut) == 7 and cut == tokens[-7:] and cut[cut_context:] == continuation


# --- scoring -------------------------------------------------------------------------------------


def brute_force(table, tokens, context):
    log_probs = torch.log_softmax(table, dim=-1)
    pairs = list(zip(tokens[context - 1 : -1], tokens[context:]))
    total = sum(log_probs[a, b].item() for a, b in pairs)
    greedy = all(int(table[a].argmax()) == b for a, b in pairs)
    return total, greedy


def test_continuation_scores_match_a_brute_force_computation_at_any_batch_size():
    table = torch.randn(9, 9, generator=torch.Generator().manual_seed(0))
    table[3, 4] = table[4, 5] = 20.0  # 3 -> 4 -> 5 is the greedy path
    table[5, 4] = table[2, 3] = -20.0  # and these never are
    sequences = [[1, 2, 3, 4, 5], [0, 3, 4, 5], [8, 7, 6, 5, 4, 3, 2], [2, 3]]
    contexts = [3, 2, 4, 1]
    expected = [brute_force(table, s, c) for s, c in zip(sequences, contexts)]
    assert [g for _, g in expected] == [True, True, False, False]
    for batch_size in (1, 3, 4):
        scores = continuation_scores(BigramModel(table), sequences, contexts, 0, batch_size)
        for (got, greedy), (want, want_greedy) in zip(scores, expected):
            assert got == pytest.approx(want, rel=1e-5) and greedy == want_greedy


def test_a_model_biased_to_the_answer_scores_one_and_its_mirror_zero(tokenizer):
    items = [
        BenchmarkItem("Question: which one?\nAnswer:", (RIGHT, WRONG), 0),
        BenchmarkItem("Question: which one?\nAnswer:", (WRONG, RIGHT), 1),
    ]
    for shots in (0, 1):
        right = score_items(model_preferring(tokenizer, RIGHT), tokenizer, items, num_fewshot=shots)
        wrong = score_items(model_preferring(tokenizer, WRONG), tokenizer, items, num_fewshot=shots)
        assert right["acc"] == right["acc_norm"] == 1.0 and right["num_fewshot"] == shots
        assert wrong["acc"] == wrong["acc_norm"] == 0.0 and wrong["n"] == 2


def test_acc_norm_divides_log_likelihood_by_the_choice_characters():
    item = BenchmarkItem("q", ("a", "bbbbbbbbbb"), gold=1)
    metrics = multiple_choice_metrics([item, item], [[-2.0, -5.0], [-2.0, -5.0]])
    assert metrics["acc"] == 0.0 and metrics["acc_norm"] == 1.0


def test_stderr_is_lm_evals_sample_standard_error_of_the_mean():
    assert binomial_stderr([True, False, True, True]) == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    assert math.isnan(binomial_stderr([True]))


def test_lambada_accuracy_is_greedy_match_and_ppl_the_exp_of_minus_mean_log_likelihood(tokenizer):
    items = [BenchmarkItem("the passage ends with a", ("word",), 0)] * 3
    [(tokens, context)] = choice_requests(tokenizer, items[0].context, items[0], None)
    vocab = tokenizer.get_vocab_size()
    table = torch.zeros(vocab, vocab)
    for a, b in zip(tokens[context - 1 : -1], tokens[context:]):
        table[a, b] = 30.0  # each target token is the argmax after the one before it
    metrics = score_items(BigramModel(table), tokenizer, items, kind="last_word")
    log_likelihood, greedy = brute_force(table, tokens, context)
    assert greedy and metrics["acc"] == 1.0
    assert metrics["ppl"] == pytest.approx(math.exp(-log_likelihood), rel=1e-4)
    assert metrics["ppl_stderr"] == pytest.approx(0.0, abs=1e-6)  # identical items
    uniform = BigramModel(torch.zeros(vocab, vocab))
    uniform_metrics = score_items(uniform, tokenizer, items, kind="last_word")
    assert uniform_metrics["acc"] == 0.0  # ties resolve to token 0, never the word
    n_tokens = len(tokens) - context
    assert uniform_metrics["ppl"] == pytest.approx(vocab**n_tokens, rel=1e-4)


def test_evaluate_benchmarks_reads_each_format_with_limit_and_a_separate_fewshot_file(
    tokenizer, tmp_path
):
    hellaswag = write_jsonl(tmp_path / "hellaswag_val.jsonl", [hellaswag_record()] * 3)
    arc = write_jsonl(tmp_path / "arc.jsonl", [arc_record("A"), arc_record("B")])
    train = write_jsonl(tmp_path / "arc_train.jsonl", [arc_record("A")] * 2)
    lambada = write_jsonl(tmp_path / "lambada.jsonl", [{"text": f"a b c {RIGHT}"}] * 3)
    results = evaluate_benchmarks(
        model_preferring(tokenizer, RIGHT),
        tokenizer,
        {"hellaswag": str(hellaswag), "arc_easy": str(arc), "lambada": str(lambada)},
        num_fewshot=2,
        fewshot_sources={"arc_easy": str(train)},
        limit=2,
    )
    assert results["hellaswag"]["n"] == 2 and results["hellaswag"]["acc"] == 1.0
    assert results["arc_easy"]["acc"] == 0.5 and results["arc_easy"]["num_fewshot"] == 2
    assert set(results["lambada"]) >= {"acc", "ppl", "ppl_stderr"}
    metrics = benchmark_metrics(results)
    assert metrics["hellaswag.acc_norm"] == 1.0 and "arc_easy.acc_stderr" in metrics
    rows = results_table(results)
    pairs = {(r["task"], r["metric"]) for r in rows}
    assert pairs >= {("arc_easy", "acc_norm"), ("lambada", "ppl")}
    assert "| arc_easy | acc | 0.5000 |" in results_markdown(rows)
