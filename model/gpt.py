"""A decoder-only transformer in one file: read it top to bottom.

token embedding -> n_layer x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> LM head

Plain single-device PyTorch: parallelism, compilation and mixed precision are applied from
outside (see `lmforge.model.parallel` and `lmforge.model.strategies`); the model never knows
about them. Decoding is one loop, `GPT.iter_next_tokens`, which `generate` and streaming share.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=False)  # biases add nothing at this scale


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each [max_seq_len, head_dim // 2]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


class RotaryTables(nn.Module):
    """RoPE's cos and sin tables for every position up to max_seq_len, read a slice per pass.

    A module without weights, so that the tables travel with whichever module holds them (the
    GPT, or the pipeline stages that share its blocks); not persistent: derived from the config,
    so they never enter a checkpoint.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        cos, sin = rope_tables(head_dim, max_seq_len, theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions [start, start + length)."""
        return self.cos[start : start + length], self.sin[start : start + length]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) of x [B, H, T, D] by position-dependent angles."""
    x1, x2 = x.float().chunk(2, dim=-1)  # fp32: bf16 angles lose precision at long positions
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.type_as(x)


class KVCache:
    """Keys and values of every layer for the tokens processed so far, for incremental decoding.

    Preallocated to `max_len` positions on the first write; `length` counts the positions filled
    and is advanced by `GPT.forward` once all layers have written.
    """

    def __init__(self, n_layer: int, max_len: int) -> None:
        self.n_layer = n_layer
        self.max_len = max_len
        self.length = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H_kv, T, D] after the cached positions; return all positions so far."""
        if self.keys is None or self.values is None:
            B, H, _, D = k.shape
            shape = (self.n_layer, B, H, self.max_len, D)
            self.keys = k.new_zeros(shape)
            self.values = v.new_zeros(shape)
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reset(self) -> None:
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        kv_width = config.n_kv_head * config.head_dim
        # One matmul for q, k and v: a single large GEMM beats three small ones.
        self.qkv = nn.Linear(config.d_model, config.d_model + 2 * kv_width, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        # QK-norm bounds the attention logits, which keeps high learning rates stable.
        self.q_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        self.k_norm = make_norm(config, config.head_dim) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        kv_width = self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, kv_width, kv_width], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        start = 0
        if kv_cache is not None:
            start = kv_cache.length
            k, v = kv_cache.update(self.layer_index, k, v)
        if self.n_kv_head != self.n_head:
            # The cache keeps only n_kv_head heads; each serves a group of query heads.
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)

        # Flash / memory-efficient kernels when available; they need is_causal, not a mask.
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # one new query sees every cached position
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # several new queries after a cached prefix: causal, aligned to the end
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.d_ff, bias=False)  # fused gate + up
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class GeluMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        # Pre-norm: the residual stream stays an identity path, so deep stacks train stably.
        self.attn_norm = make_norm(config, config.d_model)
        self.attn = CausalSelfAttention(config, layer_index)
        self.mlp_norm = make_norm(config, config.d_model)
        self.mlp = SwiGLU(config) if config.mlp == "swiglu" else GeluMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        kv_cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, kv_cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Causal language model: `forward(idx [B, T]) -> logits [B, T, vocab_size]`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = None
        if config.position == "learned":
            self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config, config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # One matrix reads and writes tokens: saves vocab x d_model parameters, trains as well.
            self.lm_head.weight = self.tok_emb.weight
        self.rope = None
        if config.position == "rope":
            self.rope = RotaryTables(config.head_dim, config.max_seq_len, config.rope_theta)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
        # Each block adds two projections to the residual stream; scaling them by 1/sqrt(2L)
        # keeps the stream's variance at initialisation independent of depth (GPT-2).
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Logits [B, T, vocab_size] for token ids `idx` [B, T].

        With `kv_cache`, `idx` continues the cached tokens and the cache is extended by T.
        Raises ValueError when the sequence would exceed `max_seq_len`.
        """
        return self.lm_head(self.hidden_states(idx, kv_cache))

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """The final-norm hidden states [B, T, d_model] that the LM head reads (task heads too)."""
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds max_seq_len={self.config.max_seq_len}"
            )
        x = self.embed(idx, start)
        rope = self.rope(start, T) if self.rope is not None else None
        for block in self.blocks:
            x = block(x, rope, kv_cache)
        if kv_cache is not None:
            kv_cache.length += T
        return self.norm(x)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The residual stream's input [B, T, d_model] for token ids `idx` [B, T] at positions
        [start, start + T): token embeddings, plus learned position embeddings when used."""
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + idx.shape[1], device=idx.device))
        return x

    def num_parameters(self) -> int:
        """Trainable parameters; a tied embedding/head matrix counts once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward) at context length `seq_len`.

        6·N for the weight matmuls (2 FLOPs per multiply-add, backward twice the forward), where N
        excludes embedding lookups (learned positions; token embeddings unless tied, when they are
        also the head's matmul), plus 12·n_layer·d_model·seq_len for the QKᵀ and A·V products
        without discount for the causal mask (PaLM, appendix B; as in nanoGPT and torchtitan).
        """
        n = self.num_parameters()
        if self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        if not self.config.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        attention = 12 * self.config.n_layer * self.config.n_head * self.config.head_dim * seq_len
        return 6 * n + attention

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue the prompts `idx` [B, T] by up to `max_new_tokens` tokens: [B, T + n], n <=
        max_new_tokens. The tokens of `iter_next_tokens` (see there for sampling, `eos_id` and
        the context window), all at once. Raises ValueError for an empty `idx` or bad settings.
        """
        steps = self.iter_next_tokens(
            idx, max_new_tokens, temperature, top_k, top_p, eos_id, generator
        )
        return torch.cat((idx, *(token[:, None] for token in steps)), dim=1)

    @torch.no_grad()
    def iter_next_tokens(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of each prompt in `idx` [B, T], one [B] tensor per forward step,
        up to `max_new_tokens` of them; the one decoding loop (`generate` and streaming use it).

        temperature 0 is greedy decoding; top_k keeps the k likeliest tokens; top_p keeps the
        smallest set whose probability reaches top_p. A sequence that emits `eos_id` is finished
        (its later tokens are eos_id); the loop stops after the step that finishes the last one.
        Keys and values are cached; past max_seq_len the context slides: the last max_seq_len
        tokens are re-encoded, exactly as a model without a cache would see them.
        Raises ValueError (on the first `next`) for an empty `idx` or bad settings.
        """
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(
                f"idx must be a non-empty [batch, tokens] tensor, got shape {tuple(idx.shape)}"
            )
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        check_sampling(temperature, top_k, top_p)
        window = self.config.max_seq_len
        cache = KVCache(self.config.n_layer, min(window, idx.shape[1] + max_new_tokens))
        tokens = idx
        pending = tokens[:, -window:]
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            logits = self(pending, kv_cache=cache)[:, -1, :]
            next_token = sample_next_token(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, eos_id)
                finished |= next_token == eos_id
            yield next_token
            if eos_id is not None and bool(finished.all()):
                return
            tokens = torch.cat((tokens, next_token[:, None]), dim=1)
            if tokens.shape[1] <= window:
                pending = next_token[:, None]
            else:  # every position shifts: the cached keys no longer apply
                cache.reset()
                pending = tokens[:, -window:]


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` [B, V]: greedy at temperature 0, else sampled."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token once the likelier ones already reach top_p: the top token always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
