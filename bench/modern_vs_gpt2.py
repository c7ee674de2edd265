"""Quality at equal parameters and tokens: the modern recipe (RoPE + RMSNorm + SwiGLU) against a
GPT-2-style baseline (learned positions + LayerNorm + GELU), both trained by `lmforge.model.train`
on the same shards with the same schedule, batch order and seed.

    python bench/modern_vs_gpt2.py --shards work/shards --out /tmp/modern_vs_gpt2

Prints both final validation losses and parameter counts, and saves val_loss.png. The SwiGLU
width (352 at d_model 128) keeps the modern model no larger than the baseline, whose learned
position table it does not need.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lmforge.model.config import ModelSpec  # noqa: E402
from lmforge.model.train import TrainConfig, TrainJob, train  # noqa: E402

RECIPES = {
    "modern (RoPE+RMSNorm+SwiGLU)": dict(position="rope", norm="rmsnorm", mlp="swiglu", d_ff=352),
    "GPT-2 style (learned+LayerNorm+GELU)": dict(position="learned", norm="layernorm", mlp="gelu"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", default="/tmp/modern_vs_gpt2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    curves, rows = {}, []
    for index, (name, overrides) in enumerate(RECIPES.items()):
        history: list[tuple[int, float]] = []
        result = train(
            TrainJob(
                shards_dir=args.shards, out_dir=str(out / f"run{index}"),
                model=ModelSpec(preset="tiny", **overrides),
                train=TrainConfig(
                    max_steps=args.steps, batch_size=args.batch, seq_len=args.seq,
                    warmup_steps=args.steps // 10, eval_every=max(1, args.steps // 6),
                    log_every=max(1, args.steps // 6), checkpoint_every=args.steps,
                    device="cpu", progress=False,
                ),
            ),
            on_log=lambda step, m, h=history: h.append((step, m["val_loss"])) if "val_loss" in m
            else None,
        )
        curves[name] = history
        rows.append((name, result.num_parameters, result.tokens, result.final_val_loss))
    print("| recipe | parameters | tokens | final val loss |\n|---|---|---|---|")
    for name, params, tokens, val in rows:
        print(f"| {name} | {params:,} | {tokens:,} | {val:.4f} |")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        ax.plot(*zip(*points), "o-", label=name, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "val_loss.png", dpi=120)
    print(f"plot: {out / 'val_loss.png'}")


if __name__ == "__main__":
    main()
