"""Streaming generation: the same tokens as GPT.generate, text printed piece by piece intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmforge.cli import main
from lmforge.model.checkpoint import save_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tasks.generate import (
    checkpoint_tokenizer_file,
    decode_stream,
    iter_new_tokens,
    stream_generate,
)
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, train_tokenizer

# ASCII only: every accented letter, CJK character and emoji is split into single-byte tokens.
TEXTS = ["the quick brown fox jumps over the lazy dog", "a tiny model says hello"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1))


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2, d_model=32, max_seq_len=24
    )
    return GPT(config).eval()


@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=0.0), dict(temperature=0.9, top_k=20), dict(temperature=1.2, top_p=0.8)],
)
def test_streamed_tokens_equal_gpt_generate_past_the_context_window(model, sampling):
    prompt = list(range(2, 12))  # 10 prompt + 30 new tokens slide past max_seq_len=24
    streamed = list(
        iter_new_tokens(model, prompt, 30, generator=torch.Generator().manual_seed(3), **sampling)
    )
    expected = model.generate(
        torch.tensor([prompt]), 30, generator=torch.Generator().manual_seed(3), **sampling
    )
    assert streamed == expected[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "sampling", [dict(temperature=0.0), dict(temperature=0.7, top_k=30, top_p=0.9)]
)
def test_a_prompt_longer_than_the_window_streams_the_tokens_gpt_generate_returns(model, sampling):
    prompt = [2 + i % 40 for i in range(30)]  # max_seq_len=24: the context slides from the start
    streamed = list(
        iter_new_tokens(model, prompt, 12, generator=torch.Generator().manual_seed(5), **sampling)
    )
    expected = model.generate(
        torch.tensor([prompt]), 12, generator=torch.Generator().manual_seed(5), **sampling
    )
    assert streamed == expected[0, len(prompt) :].tolist()


def test_streaming_with_eos_yields_generate_s_tokens_up_to_and_including_eos(model):
    prompt = list(range(2, 12))
    free = list(iter_new_tokens(model, prompt, 20, temperature=0.0))
    eos_id = free[15]  # past the window: the cache was reset on the way
    streamed = list(iter_new_tokens(model, prompt, 20, temperature=0.0, eos_id=eos_id))
    generated = model.generate(torch.tensor([prompt]), 20, temperature=0.0, eos_id=eos_id)
    assert streamed == free[: free.index(eos_id) + 1] == generated[0, len(prompt) :].tolist()


def test_streaming_stops_after_the_end_of_text_token(model):
    first = next(iter_new_tokens(model, [5, 6, 7], 10, temperature=0.0))
    assert list(iter_new_tokens(model, [5, 6, 7], 10, temperature=0.0, eos_id=first)) == [first]


def test_characters_split_across_byte_tokens_are_printed_whole(tokenizer):
    text = "fox héllo 中文 🙂!"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text.split())  # the multi-byte characters really are split
    pieces = list(decode_stream(tokenizer, iter(ids)))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert "🙂" in pieces or any(piece.startswith("🙂") for piece in pieces)


def test_a_character_cut_short_is_flushed_as_the_decoder_shows_it(tokenizer):
    ids = tokenizer.encode("ok 🙂").ids[:-1]  # the emoji's last byte never comes
    assert "".join(decode_stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_stream_generate_joins_to_the_non_streamed_completion(model, tokenizer):
    pieces = list(
        stream_generate(model, tokenizer, "the fox", 20, temperature=1.0, top_k=None, seed=7)
    )
    prompt_ids = [0] + tokenizer.encode("the fox").ids
    output = model.generate(
        torch.tensor([prompt_ids]),
        20,
        temperature=1.0,
        eos_id=0,
        generator=torch.Generator().manual_seed(7),
    )
    new_ids = output[0, len(prompt_ids) :].tolist()
    new_ids = new_ids[: new_ids.index(0)] if 0 in new_ids else new_ids
    assert "".join(pieces) == tokenizer.decode(new_ids, skip_special_tokens=False)
    assert len(pieces) > 1


def test_invalid_sampling_settings_fail_before_any_text(model, tokenizer):
    with pytest.raises(ValueError, match="top_p"):
        stream_generate(model, tokenizer, "hi", top_p=1.5)


def test_tokenizer_is_found_beside_the_checkpoint_or_in_its_training_run(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "step-000004"
    step.mkdir(parents=True)
    (tmp_path / "run" / "tokenizer.json").write_text("{}")
    assert checkpoint_tokenizer_file(step) == tmp_path / "run" / "tokenizer.json"
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        checkpoint_tokenizer_file(tmp_path / "elsewhere")


def test_a_missing_checkpoint_folder_is_reported_as_missing_not_as_lacking_a_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder .*nowhere does not exist"):
        checkpoint_tokenizer_file(tmp_path / "nowhere")


def write_checkpoint(directory: Path, model: GPT, tokenizer) -> None:
    save_model(model, directory)
    tokenizer.save(str(directory / "tokenizer.json"))


def test_cli_generate_prints_prompt_and_seeded_continuation(tmp_path, model, tokenizer, capsys):
    write_checkpoint(tmp_path / "ckpt", model, tokenizer)
    args = ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "the fox"]
    args += ["--max-new-tokens", "12", "--seed", "5", "--top-p", "0.9", "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    expected = "".join(stream_generate(model, tokenizer, "the fox", 12, top_p=0.9, seed=5))
    assert first == "the fox" + expected + "\n"


def test_cli_generate_reports_bad_settings(tmp_path, model, tokenizer, capsys):
    write_checkpoint(tmp_path / "ckpt", model, tokenizer)
    args = ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "x"]
    code = main([*args, "--temperature", "-1"])
    assert code == 2
    captured = capsys.readouterr()
    assert "temperature" in captured.err and captured.out == ""
