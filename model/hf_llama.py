"""The Hugging Face Llama adapter of lmforge's GPT: which configs Llama can express, the
`config.json` of that shape, and the weights under Llama's names.

Kept beside the model (as torchtitan keeps its state-dict adapters) so that a change to the
GPT's weight names or fused projections is made in the same folder as its mapping. lmforge's
default recipe is exactly Llama's, so the mapping only renames and unfuses: `qkv` -> q/k/v_proj,
`gate_up` -> gate/up_proj.
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT


def llama_incompatibilities(config: ModelConfig) -> list[str]:
    """Why `config` is not a Llama architecture; empty when it is."""
    problems = []
    if config.norm != "rmsnorm":
        problems.append(f"norm={config.norm!r} (Llama uses RMSNorm)")
    if config.mlp != "swiglu":
        problems.append(f"mlp={config.mlp!r} (Llama uses a SwiGLU feed-forward)")
    if config.position != "rope":
        problems.append(f"position={config.position!r} (Llama uses rotary positions)")
    if config.qk_norm:
        problems.append("qk_norm=True (Llama has no query/key normalisation)")
    return problems


def llama_config(config: ModelConfig, eos_id: int, pad_id: int) -> dict[str, Any]:
    """The `config.json` of a LlamaForCausalLM with the shape of `config`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        # transformers < 5 reads rope_theta, >= 5 reads rope_parameters: write both.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        # Documents start after <|endoftext|> in training, so it is both BOS and EOS.
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """`model`'s weights under Llama's names, fused projections split, each tensor contiguous."""
    config = model.config
    kv_width = config.n_kv_head * config.head_dim
    weights = {"model.embed_tokens.weight": model.tok_emb.weight}
    for i, block in enumerate(model.blocks):
        prefix = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.split([config.d_model, kv_width, kv_width], dim=0)
        gate, up = block.mlp.gate_up.weight.chunk(2, dim=0)
        weights.update(
            {
                prefix + "input_layernorm.weight": block.attn_norm.weight,
                prefix + "self_attn.q_proj.weight": q,
                prefix + "self_attn.k_proj.weight": k,
                prefix + "self_attn.v_proj.weight": v,
                prefix + "self_attn.o_proj.weight": block.attn.out_proj.weight,
                prefix + "post_attention_layernorm.weight": block.mlp_norm.weight,
                prefix + "mlp.gate_proj.weight": gate,
                prefix + "mlp.up_proj.weight": up,
                prefix + "mlp.down_proj.weight": block.mlp.down.weight,
            }
        )
    weights["model.norm.weight"] = model.norm.weight
    if not config.tie_embeddings:  # tied: transformers rebuilds lm_head from embed_tokens
        weights["lm_head.weight"] = model.lm_head.weight
    return {name: t.detach().to("cpu").contiguous() for name, t in weights.items()}
