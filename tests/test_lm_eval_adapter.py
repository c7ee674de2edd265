"""The lm-eval adapter: lm-eval's own CLI evaluates an lmforge checkpoint on a local task and
agrees with lmforge's scorer; rolling log-likelihoods and generation follow lm-eval's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval")

from lmforge.tasks.evaluate.lm_eval_model import LmforgeLM  # noqa: E402
from lmforge.model.checkpoint import save_model  # noqa: E402
from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.model.gpt import GPT  # noqa: E402
from lmforge.tasks.evaluate.benchmark_formats import BenchmarkItem  # noqa: E402
from lmforge.tasks.evaluate.benchmarks import score_items  # noqa: E402
from lmforge.tasks.evaluate.checkpoint import sequence_log_probs  # noqa: E402
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, train_tokenizer  # noqa: E402

QUESTIONS = [
    {"question": "What is two plus two?", "choices": ["four", "five", "twenty two"], "label": 0},
    {"question": "Which is a colour?", "choices": ["seven", "green"], "label": 1},
    {"question": "What do cats say?", "choices": ["meow", "moo", "quack"], "label": 0},
    {"question": "Which one is a fruit?", "choices": ["stone", "apple"], "label": 1},
]
TASK_YAML = """\
task: lmforge_toy_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    corpus = [f"Question: {q['question']}\nAnswer: {' '.join(q['choices'])}" for q in QUESTIONS]
    tokenizer = train_tokenizer(corpus * 10, TokenizerConfig(vocab_size=300, min_frequency=1))
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2, d_model=32, max_seq_len=16
    )
    save_model(GPT(config).eval(), directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def request(*args):
    return SimpleNamespace(args=args)


def test_lm_eval_cli_scores_a_local_task_as_lmforges_own_scorer_does(checkpoint, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy_qa.yaml").write_text(TASK_YAML.format(data=data))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(
        [
            sys.executable, "-m", "lmforge.tasks.evaluate.lm_eval_model",
            "--model", "lmforge",
            "--model_args", f"checkpoint={checkpoint}",
            "--device", "cpu",
            "--tasks", "lmforge_toy_qa",
            "--include_path", str(tasks),
            "--output_path", str(tmp_path / "out"),
        ],
        check=True, env=env, capture_output=True, timeout=300,
    )
    [results_file] = (tmp_path / "out").rglob("results_*.json")
    scores = json.loads(results_file.read_text())["results"]["lmforge_toy_qa"]

    lm = LmforgeLM(str(checkpoint), device="cpu")
    items = [
        BenchmarkItem(f"Question: {q['question']}\nAnswer:", tuple(q["choices"]), q["label"])
        for q in QUESTIONS
    ]
    ours = score_items(lm.model, lm.tokenizer, items, max_length=lm.max_length)
    assert scores["acc,none"] == pytest.approx(ours["acc"])
    assert scores["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    assert scores["acc_stderr,none"] == pytest.approx(ours["acc_stderr"])


class BigramModel(torch.nn.Module):
    """The next token's logits depend on the current token only: context length cannot matter."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def test_rolling_log_likelihood_scores_every_token_once_across_windows(checkpoint):
    lm = LmforgeLM(str(checkpoint), device="cpu", batch_size=2)
    short, long = "Which is a colour?", " ".join(q["question"] for q in QUESTIONS)
    [short_ll] = lm.loglikelihood_rolling([request(short)])
    whole = sequence_log_probs(lm.model, [[lm.eot_id] + lm.encode(short)], lm.pad_id, 1)[0]
    assert short_ll == pytest.approx(whole, rel=1e-5)  # one window: the plain sequence score

    lm.model = BigramModel(lm.tokenizer.get_vocab_size())
    tokens = [lm.eot_id] + lm.encode(long)
    assert len(tokens) > 2 * lm.max_length  # spans several windows
    log_probs = torch.log_softmax(lm.model.table.detach(), dim=-1)
    expected = sum(log_probs[a, b].item() for a, b in zip(tokens, tokens[1:]))
    [long_ll] = lm.loglikelihood_rolling([request(long)])
    assert long_ll == pytest.approx(expected, rel=1e-5)


def test_loglikelihood_moves_trailing_context_spaces_into_the_continuation(checkpoint):
    lm = LmforgeLM(str(checkpoint), device="cpu")
    tokens, context = lm.context_and_continuation("Answer: ", "four")
    assert tokens[context:] == lm.encode(" four")
    [(spaced, _), (plain, _)] = lm.loglikelihood(
        [request("Answer: ", "four"), request("Answer:", " four")]
    )
    assert spaced == pytest.approx(plain)


def test_generate_until_stops_before_the_stop_string(checkpoint):
    lm = LmforgeLM(str(checkpoint), device="cpu")
    [free] = lm.generate_until([request("Question:", {"max_gen_toks": 12})])
    assert free and len(lm.encode(free)) <= 12
    stop = free.strip()[:2]
    [cut] = lm.generate_until([request("Question:", {"until": [stop], "max_gen_toks": 12})])
    assert stop not in cut and free.startswith(cut)
