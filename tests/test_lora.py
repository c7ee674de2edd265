"""LoRA: only adapters train, the update starts at zero, merging equals base + (alpha/r)·B·A."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.checkpoint import load_model, save_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.model.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    lora_state_dict,
    merge_lora,
)


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=64, n_layer=2, n_head=2, d_model=32, max_seq_len=16)
    return GPT(ModelConfig(**{**config, **overrides}))


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(seed))


def train_adapters(model: GPT, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = tokens()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_a_fresh_adapter_leaves_the_model_unchanged():
    model = tiny_gpt()
    before = model(tokens())
    apply_lora(model, LoRAConfig(rank=4))
    torch.testing.assert_close(model(tokens()), before)


def test_only_adapter_weights_train_and_the_base_stays_bit_identical():
    model = tiny_gpt()
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    adapted = apply_lora(model, LoRAConfig(rank=4, targets=("qkv", "out_proj")))
    assert adapted == [f"blocks.{i}.attn.{n}" for i in range(2) for n in ("qkv", "out_proj")]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith((".lora_a", ".lora_b")) for name in trainable)
    train_adapters(model)
    for name, p in model.named_parameters():
        original = name.replace(".base.", ".")
        if original in base:
            assert torch.equal(p, base[original]), name
    assert all(v.abs().sum() > 0 for k, v in lora_state_dict(model).items() if k.endswith("lora_b"))


def test_merged_weight_is_base_plus_scaled_b_times_a_and_outputs_agree():
    model = tiny_gpt()
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0))
    train_adapters(model)
    layer = model.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear)
    expected = (
        layer.base.weight.detach() + (8.0 / 4) * layer.lora_b.detach() @ layer.lora_a.detach()
    )
    adapted_output = model(tokens())
    merge_lora(model)
    assert isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, expected)
    torch.testing.assert_close(model(tokens()), adapted_output, rtol=1e-4, atol=1e-5)


def test_a_merged_model_saves_and_loads_as_a_plain_gpt(tmp_path):
    model = tiny_gpt()
    apply_lora(model, LoRAConfig(rank=2))
    train_adapters(model)
    merge_lora(model)
    save_model(model, tmp_path)
    torch.testing.assert_close(load_model(tmp_path)(tokens()), model.eval()(tokens()))


def test_unmerge_restores_the_base_weight():
    model = tiny_gpt()
    apply_lora(model, LoRAConfig(rank=2))
    train_adapters(model)
    layer = model.blocks[1].attn.out_proj
    original = layer.base.weight.detach().clone()
    layer.merge()
    assert not torch.allclose(layer.base.weight, original)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original)


def test_targets_that_match_nothing_name_the_layers_that_exist():
    with pytest.raises(ValueError, match="named .*qkv"):
        apply_lora(tiny_gpt(), LoRAConfig(targets=("q_proj",)))


def test_a_head_tied_to_the_embeddings_is_refused():
    with pytest.raises(ValueError, match="tied"):
        apply_lora(tiny_gpt(), LoRAConfig(targets=("lm_head",)))


def test_invalid_lora_settings_are_rejected():
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(dropout=1.0)
