"""Hugging Face export: a Llama folder that transformers loads with lmforge's exact logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lmforge.cli import main
from lmforge.model.checkpoint import save_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tasks.export_hf import ExportError, export_hf
from lmforge.tasks.tokens.tokenizer import TokenizerConfig, train_tokenizer

TEXTS = ["the quick brown fox jumps over the lazy dog", "héllo wörld, 中文 and 🙂 too"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, TokenizerConfig(vocab_size=300, min_frequency=1))


def write_checkpoint(directory: Path, tokenizer, **overrides) -> GPT:
    torch.manual_seed(0)
    fields = dict(n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=64)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), **{**fields, **overrides})
    model = GPT(config).eval()
    save_model(model, directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    return model


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(tie_embeddings=False, rope_theta=500.0, n_kv_head=4)],
    ids=["tied-gqa", "untied-mha-theta500"],
)
def test_transformers_loads_the_export_with_matching_logits(tmp_path, tokenizer, overrides):
    transformers = pytest.importorskip("transformers")
    model = write_checkpoint(tmp_path / "ckpt", tokenizer, **overrides)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    seeded = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=seeded)
    with torch.no_grad():
        expected = model(ids)
        actual = hf_model(ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    assert hf_model.config.tie_word_embeddings == model.config.tie_embeddings


def test_transformers_tokenizer_encodes_and_decodes_like_lmforge(tmp_path, tokenizer):
    transformers = pytest.importorskip("transformers")
    write_checkpoint(tmp_path / "ckpt", tokenizer)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "the lazy fox says héllo 🙂"
    ids = tokenizer.encode(text).ids
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == text
    assert (hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id) == (0, 1)
    assert hf_tokenizer.model_max_length == 64


def test_export_folder_holds_llama_config_weights_and_tokenizer(tmp_path, tokenizer):
    model = write_checkpoint(tmp_path / "ckpt", tokenizer)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")

    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert files == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "manifest.json",  # lmforge's: what was exported, so a rerun may replace the folder
    }
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["intermediate_size"] == model.config.d_ff
    weights = safetensors.torch.load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert "lm_head.weight" not in weights  # tied: rebuilt from the embedding
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 16, 64)
    q_rows = model.blocks[1].attn.qkv.weight[:64]
    assert torch.equal(weights["model.layers.1.self_attn.q_proj.weight"], q_rows)
    up_rows = model.blocks[0].mlp.gate_up.weight[model.config.d_ff :]
    assert torch.equal(weights["model.layers.0.mlp.up_proj.weight"], up_rows)


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(norm="layernorm"), "norm='layernorm'"),
        (dict(mlp="gelu"), "mlp='gelu'"),
        (dict(position="learned"), "position='learned'"),
        (dict(qk_norm=True), "qk_norm=True"),
    ],
)
def test_architectures_llama_cannot_express_are_refused(tmp_path, tokenizer, overrides, named):
    write_checkpoint(tmp_path / "ckpt", tokenizer, **overrides)
    with pytest.raises(ExportError, match=named.replace("(", r"\(")):
        export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "ckpt"]  # no temporary folder left behind


def test_a_step_checkpoint_uses_its_training_runs_tokenizer(tmp_path, tokenizer):
    step = tmp_path / "train" / "checkpoints" / "step-000010"
    write_checkpoint(step, tokenizer)
    (step / "tokenizer.json").rename(tmp_path / "train" / "tokenizer.json")
    export_hf(step, tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (
        tmp_path / "train" / "tokenizer.json"
    ).read_bytes()


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, tokenizer):
    write_checkpoint(tmp_path / "ckpt", tokenizer)
    bigger = train_tokenizer(TEXTS * 3 + ["more words make more merges"], TokenizerConfig(400, 1))
    bigger.save(str(tmp_path / "other.json"))
    with pytest.raises(ExportError, match="not this checkpoint's tokenizer"):
        export_hf(tmp_path / "ckpt", tmp_path / "hf", tokenizer=tmp_path / "other.json")


def test_cli_exports_and_reports_refusals(tmp_path, tokenizer, capsys):
    write_checkpoint(tmp_path / "ok", tokenizer)
    export = ["export", "hf", "--checkpoint"]
    assert main([*export, str(tmp_path / "ok"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()

    write_checkpoint(tmp_path / "gelu", tokenizer, mlp="gelu")
    code = main([*export, str(tmp_path / "gelu"), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "mlp='gelu'" in capsys.readouterr().err
