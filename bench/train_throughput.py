"""Training throughput on this CPU: lmforge's GPT against Hugging Face `LlamaForCausalLM` with the
identical architecture (RoPE, RMSNorm, SwiGLU, tied head) and batch, measured in the same run, and
MFU against a matmul peak also measured in this run.

    python bench/train_throughput.py          # needs `transformers` (a separate venv; not core)

One training step = forward, cross-entropy, backward, AdamW step (lmforge's as `lmforge train`
runs it on a CPU: the LM head and loss fused in cache-sized chunks, `model/loss.py`). The two models alternate in
rounds so that a neighbour's load hits both alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.model.loss import linear_cross_entropy
from lmforge.model.mfu import measure_matmul_peak

SHAPES = {
    "tiny": dict(n_layer=4, n_head=4, d_model=128, max_seq_len=256),
    "20M": dict(n_layer=5, n_head=8, d_model=512, max_seq_len=256),
}


def llama_twin(config: ModelConfig) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head, max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta, tie_word_embeddings=True,
        hidden_act="silu", attention_bias=False, mlp_bias=False,
    )
    hf._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf)


def step_fn(model: torch.nn.Module, hf: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if hf:
            loss = F.cross_entropy(model(x).logits.float().flatten(0, 1), y.flatten())
        else:  # what `lmforge train` does on a CPU: the fused, chunked head + loss
            hidden = model.hidden_states(x).flatten(0, 1)
            loss = linear_cross_entropy(hidden, model.lm_head.weight, y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(step, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = measure_matmul_peak(size=1024, seconds=2.0)
    print(f"threads {torch.get_num_threads()}, measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print("| shape | params | lmforge tok/s | HF Llama tok/s | ratio | lmforge MFU | HF MFU |")
    print("|---|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        config = ModelConfig(vocab_size=args.vocab, **shape)
        ours, theirs = GPT(config), llama_twin(config)
        assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters()), "not twins"
        x = torch.randint(0, args.vocab, (args.batch, args.seq))
        y = torch.randint(0, args.vocab, (args.batch, args.seq))
        steps = {"ours": step_fn(ours, hf=False), "hf": step_fn(theirs, hf=True)}
        for step in steps.values():
            time_steps(step, x, y, 1)  # warm-up: allocator, thread pool
        seconds = {key: [] for key in steps}
        for _ in range(args.rounds):
            for key, step in steps.items():
                seconds[key].append(time_steps(step, x, y, args.steps))
        tokens = args.batch * args.seq
        rate = {key: tokens / statistics.median(values) for key, values in seconds.items()}
        flops = ours.flops_per_token(args.seq)
        print(
            f"| {name} | {ours.num_parameters() / 1e6:.1f}M | {rate['ours']:,.0f} | "
            f"{rate['hf']:,.0f} | {rate['ours'] / rate['hf']:.2f}x | "
            f"{flops * rate['ours'] / peak:.0%} | {flops * rate['hf'] / peak:.0%} |"
        )


if __name__ == "__main__":
    main()
