import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from model_fixtures import BigramModel

from lmforge.manifest import stage_output
from lmforge.model.checkpoint import save_model
from lmforge.model.config import ModelConfig
from lmforge.model.data import open_token_split
from lmforge.model.gpt import GPT
from lmforge.tasks.evaluate.blimp import BlimpFormatError, MinimalPair, load_blimp
from lmforge.tasks.evaluate.checkpoint import (
    EvalConfig,
    EvaluationError,
    blimp_accuracy,
    evaluate_checkpoint,
    language_model_metrics,
    sample_generations,
    sequence_log_probs,
    split_bytes_per_token,
    validation_metrics,
    window_loss,
)
from lmforge.tasks.tokens.shards import ShardConfig, build_shards
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, train_tokenizer

PAIRS = [
    ("the cat sleeps on the mat", "the cat sleep on the mat"),
    ("the dogs run in the park", "the dogs runs in the park"),
    ("a bird sings every morning", "a bird sing every morning"),
    ("the children play outside", "the children plays outside"),
]


def uniform_model(vocab: int) -> BigramModel:
    return BigramModel(torch.zeros(vocab, vocab))


def bigram_model_fitted_to(tokenizer, sentences: list[str]) -> BigramModel:
    """Bigram log-probabilities estimated from `sentences` (each after <|endoftext|>)."""
    vocab = tokenizer.get_vocab_size()
    counts = torch.full((vocab, vocab), 0.01)
    for encoding in tokenizer.encode_batch(sentences):
        ids = [0] + encoding.ids + [0]
        for a, b in zip(ids, ids[1:]):
            counts[a, b] += 1
    return BigramModel(torch.log(counts / counts.sum(dim=1, keepdim=True)))


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [" ".join(pair) for pair in PAIRS] * 20 + ["plain text about many other things"] * 5
    return train_tokenizer(corpus, TokenizerConfig(vocab_size=300, min_frequency=2))


def write_paradigm(directory, name, pairs):
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"sentence_good": g, "sentence_bad": b, "UID": name}) for g, b in pairs]
    (directory / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


# --- validation loss and bits per byte ----------------------------------------------------------


def test_uniform_model_scores_log_vocab_nats_and_log2_vocab_times_tokens_per_byte():
    vocab, seq_len = 50, 16
    tokens = np.random.default_rng(0).integers(0, vocab, size=10 * seq_len + 1).astype(np.uint16)
    windows = [tokens[i * seq_len : i * seq_len + seq_len + 1] for i in range(10)]
    split_tokens, split_bytes = 1000, 3700  # the manifest's counts for the split
    total_nats, predicted = window_loss(uniform_model(vocab), windows, batch_size=3)
    metrics = language_model_metrics(
        total_nats, predicted, bytes_per_token=split_bytes / split_tokens
    )
    assert predicted == metrics["val_tokens"] == 10 * seq_len
    assert metrics["val_loss"] == pytest.approx(math.log(vocab))
    assert metrics["val_ppl"] == pytest.approx(vocab)
    assert metrics["val_bpb"] == pytest.approx(math.log2(vocab) * split_tokens / split_bytes)


def test_window_loss_is_the_mean_cross_entropy_of_next_tokens():
    table = torch.randn(7, 7)
    windows = [np.array([1, 2, 3, 4]), np.array([4, 5, 6, 0])]
    total, count = window_loss(BigramModel(table), windows, batch_size=2)
    pairs = [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 0)]
    expected = -sum(torch.log_softmax(table[a], -1)[b].item() for a, b in pairs)
    assert count == 6 and total == pytest.approx(expected, rel=1e-5)


def test_evaluating_no_tokens_is_an_error_not_a_division_by_zero():
    with pytest.raises(EvaluationError, match="no validation tokens"):
        language_model_metrics(0.0, 0, bytes_per_token=4.0)


def make_shards(root, texts):
    with stage_output(root / "data", "data_refresh", params={}) as stage:
        (stage.path / "docs").mkdir()
        ids = [f"doc-{i}" for i in range(len(texts))]
        table = pa.table({"id": ids, "url": ids, "text": texts, "lang": ["en"] * len(texts)})
        pq.write_table(table, stage.path / "docs" / "part-00000.parquet")
    return build_shards(
        root / "data", root / "shards",
        ShardConfig(vocab_size=300, shard_tokens=500, val_fraction=0.3),
    )  # fmt: skip


def test_validation_metrics_reads_the_split_through_the_model_data_loader(tmp_path):
    texts = [" ".join(pair) + f" number {i}" for i, pair in enumerate(PAIRS * 30)]
    manifest = make_shards(tmp_path, texts)
    vocab = manifest["tokenizer"]["vocab_size"]
    split = open_token_split(tmp_path / "shards" / "val")
    metrics = validation_metrics(
        uniform_model(vocab),
        split,
        seq_len=32,
        batch_size=4,
        max_tokens=320,
        bytes_per_token=split_bytes_per_token(manifest, "val"),
    )
    counts = manifest["splits"]["val"]
    assert metrics["val_tokens"] == 320
    assert metrics["val_bpb"] == pytest.approx(
        math.log2(vocab) * counts["tokens"] / counts["bytes"]
    )


# --- BLiMP ---------------------------------------------------------------------------------------


def test_a_model_that_prefers_good_sentences_scores_one_and_its_mirror_zero(tokenizer, tmp_path):
    write_paradigm(tmp_path / "blimp", "agreement", PAIRS)
    paradigms = load_blimp(tmp_path / "blimp")
    good_model = bigram_model_fitted_to(tokenizer, [g for g, _ in PAIRS])
    bad_model = bigram_model_fitted_to(tokenizer, [b for _, b in PAIRS])
    assert blimp_accuracy(good_model, tokenizer, paradigms, batch_size=3) == {
        "blimp_acc": 1.0,
        "blimp": {"agreement": 1.0},
    }
    assert blimp_accuracy(bad_model, tokenizer, paradigms, batch_size=3)["blimp_acc"] == 0.0


def test_blimp_accuracy_is_the_mean_over_paradigms_and_honours_the_pair_cap(tokenizer):
    good_model = bigram_model_fitted_to(tokenizer, [g for g, _ in PAIRS])
    flipped = [MinimalPair(good=b, bad=g) for g, b in PAIRS]
    paradigms = {"right": [MinimalPair(g, b) for g, b in PAIRS], "flipped": flipped}
    result = blimp_accuracy(good_model, tokenizer, paradigms, batch_size=8)
    assert result == {"blimp_acc": 0.5, "blimp": {"right": 1.0, "flipped": 0.0}}
    mixed = {"mixed": [MinimalPair(*PAIRS[0]), flipped[1], flipped[2]]}
    assert (
        blimp_accuracy(good_model, tokenizer, mixed, 8, max_pairs_per_paradigm=2)["blimp_acc"]
        == 0.5
    )


def test_padding_in_a_batch_does_not_change_any_sentence_score():
    table = torch.randn(20, 20)
    sequences = [[0, 5, 6, 7, 8, 9, 10], [0, 3], [0, 11, 12, 13]]
    alone = [
        sequence_log_probs(BigramModel(table), [s], pad_id=1, batch_size=1)[0] for s in sequences
    ]
    batched = sequence_log_probs(BigramModel(table), sequences, pad_id=1, batch_size=3)
    assert batched == pytest.approx(alone, rel=1e-5)
    expected_second = torch.log_softmax(table[0], -1)[3].item()
    assert batched[1] == pytest.approx(expected_second, rel=1e-5)


def test_blimp_loader_names_a_directory_without_jsonl(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BlimpFormatError, match="empty has no \\*.jsonl"):
        load_blimp(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_blimp(tmp_path / "missing")


def test_blimp_loader_names_file_and_line_of_a_malformed_record(tmp_path):
    write_paradigm(tmp_path / "a", "broken", PAIRS[:2])
    path = tmp_path / "a" / "broken.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(BlimpFormatError, match=r"broken\.jsonl:3: not valid JSON"):
        load_blimp(tmp_path / "a")
    path.write_text(json.dumps({"sentence_good": "only the good one"}) + "\n")
    with pytest.raises(BlimpFormatError, match=r"broken\.jsonl:1: needs .*sentence_bad"):
        load_blimp(tmp_path / "a")


def test_blimp_loader_selects_named_paradigms_and_refuses_unknown_ones(tmp_path):
    write_paradigm(tmp_path / "b", "one", PAIRS[:1])
    write_paradigm(tmp_path / "b", "two", PAIRS[:2])
    assert list(load_blimp(tmp_path / "b")) == ["one", "two"]
    assert [len(p) for p in load_blimp(tmp_path / "b", ["two"]).values()] == [2]
    with pytest.raises(FileNotFoundError, match="three"):
        load_blimp(tmp_path / "b", ["three"])


def test_the_published_blimp_files_load_as_1000_pairs_per_paradigm(shared_dir):
    paradigms = load_blimp(shared_dir / "benchmarks" / "blimp")
    assert len(paradigms) == 34
    assert {len(pairs) for pairs in paradigms.values()} == {1000}
    assert paradigms["adjunct_island"][0].good == "Who should Derek hug after shocking Richard?"


# --- samples -------------------------------------------------------------------------------------


def test_samples_are_reproducible_by_seed_stop_at_endoftext_and_keep_global_rng(tokenizer):
    vocab = tokenizer.get_vocab_size()
    # a bigram chain that spells " cat sleeps" after "the", then ends the document
    chain = tokenizer.encode("the").ids[-1:] + tokenizer.encode(" cat sleeps").ids + [0]
    assert len(set(chain)) == len(chain)
    table = torch.zeros(vocab, vocab)
    for a, b in zip(chain, chain[1:]):
        table[a, b] = 50.0
    model = BigramModel(table)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    samples = sample_generations(model, tokenizer, ["the"], max_new_tokens=10, top_k=1, seed=0)
    assert samples == [{"prompt": "the", "completion": " cat sleeps"}]
    assert torch.equal(torch.get_rng_state(), state)

    noisy = uniform_model(vocab)
    first = sample_generations(
        noisy, tokenizer, ["a", "the"], max_new_tokens=8, temperature=1.0, top_k=None, seed=5
    )
    again = sample_generations(
        noisy, tokenizer, ["the"], max_new_tokens=8, temperature=1.0, top_k=None, seed=5
    )
    other = sample_generations(
        noisy, tokenizer, ["the"], max_new_tokens=8, temperature=1.0, top_k=None, seed=6
    )
    assert first[1] == again[0] and again != other


# --- a real checkpoint ----------------------------------------------------------------------------


@pytest.fixture
def trained_dirs(tmp_path):
    texts = [" ".join(pair) + f" number {i}" for i, pair in enumerate(PAIRS * 30)]
    manifest = make_shards(tmp_path, texts)
    config = ModelConfig(
        vocab_size=manifest["tokenizer"]["vocab_size"],
        n_layer=1,
        n_head=2,
        d_model=32,
        max_seq_len=64,
    )
    torch.manual_seed(0)
    save_model(GPT(config), tmp_path / "train")
    shutil.copyfile(tmp_path / "shards" / "tokenizer.json", tmp_path / "train" / "tokenizer.json")
    write_paradigm(tmp_path / "blimp", "agreement", PAIRS)
    return tmp_path


def test_evaluate_checkpoint_reports_validation_blimp_and_samples_for_a_real_gpt(trained_dirs):
    results = evaluate_checkpoint(
        trained_dirs / "train",
        trained_dirs / "shards",
        EvalConfig(max_val_tokens=256, batch_size=4, prompts=["the cat"], max_new_tokens=5),
        blimp_dir=trained_dirs / "blimp",
    )
    vocab = json.loads((trained_dirs / "train" / "model_config.json").read_text())["vocab_size"]
    # an untrained model is close to uniform over its vocabulary
    assert abs(results["val_loss"] - math.log(vocab)) < 0.5
    assert results["val_ppl"] == pytest.approx(math.exp(results["val_loss"]))
    assert results["val_tokens"] == 256 // 64 * 64
    assert set(results["blimp"]) == {"agreement"} and 0 <= results["blimp_acc"] <= 1
    assert [s["prompt"] for s in results["samples"]] == ["the cat"]
    json.dumps(results)  # the flow stores it as results.json


def test_evaluate_checkpoint_refuses_a_tokenizer_the_shards_were_not_built_with(trained_dirs):
    other = train_tokenizer(["something else entirely " * 5] * 3, TokenizerConfig(vocab_size=280))
    other.save(str(trained_dirs / "train" / "tokenizer.json"))
    with pytest.raises(EvaluationError, match=r"train/tokenizer\.json is not the tokenizer"):
        evaluate_checkpoint(trained_dirs / "train", trained_dirs / "shards", EvalConfig(prompts=[]))


def test_evaluate_checkpoint_refuses_a_model_whose_vocab_differs_from_the_tokenizer(trained_dirs):
    (trained_dirs / "train" / "tokenizer.json").unlink()  # falls back to the shards' tokenizer
    save_model(
        GPT(ModelConfig(vocab_size=512, n_layer=1, n_head=2, d_model=32)), trained_dirs / "train"
    )
    with pytest.raises(EvaluationError, match="vocab_size=512"):
        evaluate_checkpoint(trained_dirs / "train", trained_dirs / "shards", EvalConfig(prompts=[]))


def test_evaluate_checkpoint_refuses_a_seq_len_beyond_the_models_context(trained_dirs):
    config = EvalConfig(seq_len=65, prompts=[])  # the fixture's model reads 64 tokens
    with pytest.raises(EvaluationError, match=r"eval\.seq_len=65 is longer than the context"):
        evaluate_checkpoint(trained_dirs / "train", trained_dirs / "shards", config)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"max_val_tokens": 0}, "max_val_tokens"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_tokens_per_language": -1}, "max_tokens_per_language"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"tasks": "no_such_benchmark=file.jsonl"}, "unknown benchmark 'no_such_benchmark'"),
        ({"tasks": "piqa="}, "'piqa' has an empty source"),
        (
            {"tasks": {"arc_easy": "a.jsonl"}, "fewshot_from": {"piqa": "p.jsonl"}},
            "fewshot_from names piqa, which tasks does not",
        ),
        ({"max_new_token": 5}, "max_new_token"),  # a misspelt field is refused, not ignored
    ],
)
def test_eval_config_refuses_invalid_values_naming_the_field(values, named):
    with pytest.raises(ValueError, match=named):
        EvalConfig(**values)


def test_eval_config_reads_benchmarks_as_the_command_line_spells_them():
    config = EvalConfig(tasks="arc_easy=ARC-Easy-Test.jsonl, piqa", fewshot_from="piqa=train.jsonl")
    assert config.tasks["arc_easy"] == "ARC-Easy-Test.jsonl"
    assert config.tasks["piqa"].startswith("https://")  # a bare name: the published file
    assert config.fewshot_from == {"piqa": "train.jsonl"}
