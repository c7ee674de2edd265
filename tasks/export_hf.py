"""Export a checkpoint as a Hugging Face Llama folder that `transformers` loads unchanged.

lmforge's default recipe (RMSNorm pre-norm, SwiGLU, RoPE with the rotate-half pairing, no
biases, optional grouped-query attention and tied head) is exactly Llama's, so the export only
renames and unfuses weights: `qkv` -> q/k/v_proj, `gate_up` -> gate/up_proj. Any other recipe
(LayerNorm, GELU, learned positions, QK-norm) would load into Llama and compute something else,
so it is refused with an error instead. Written without importing transformers: config.json,
generation_config.json, model.safetensors and the tokenizer files are plain JSON and tensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch

from lmforge.errors import LmforgeError
from lmforge.manifest import claim_output_dir, stage_output
from lmforge.model.checkpoint import load_model
from lmforge.model.hf_llama import llama_config, llama_incompatibilities, llama_state_dict
from lmforge.tasks.generate import checkpoint_tokenizer_file
from lmforge.tasks.tokens.tokenizer import (
    EOT_TOKEN,
    PAD_TOKEN,
    load_tokenizer,
    special_token_ids,
    tokenizer_vocab_size,
)


STAGE = "export_hf"


class ExportError(LmforgeError, ValueError):
    """The checkpoint uses a feature the target format cannot express."""


def tokenizer_config(eos_token: str, pad_token: str, model_max_length: int) -> dict[str, Any]:
    """The `tokenizer_config.json` that makes AutoTokenizer load `tokenizer.json` as is."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eos_token,
        "eos_token": eos_token,
        "pad_token": pad_token,
        "model_max_length": model_max_length,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }


def export_hf(
    checkpoint: str | Path, out: str | Path, tokenizer: str | Path | None = None
) -> Path:
    """Write a Hugging Face Llama folder for `checkpoint` into `out` and return `out`.

    `out` receives config.json, generation_config.json, model.safetensors (float32, as trained),
    tokenizer.json (copied unchanged), tokenizer_config.json and special_tokens_map.json, and
    lmforge's manifest.json (stage `export_hf`, naming the checkpoint and tokenizer by digest).
    The tokenizer defaults to the checkpoint's own (see `checkpoint_tokenizer_file`). The folder
    is written under a temporary name and renamed (`stage_output`), replacing an existing `out`
    only when that is an earlier export.

    Raises OutputRefused before any work when `out` holds anything else or overlaps the
    checkpoint or tokenizer, ExportError when the architecture is not Llama's or the tokenizer
    has more tokens than the model's vocabulary, FileNotFoundError when the checkpoint or
    tokenizer is missing.
    """
    claim_output_dir(out, STAGE, [checkpoint] + ([tokenizer] if tokenizer else []))
    model = load_model(checkpoint)
    problems = llama_incompatibilities(model.config)
    if problems:
        raise ExportError(
            f"{checkpoint} cannot be exported as a Hugging Face Llama model: "
            + "; ".join(problems)
            + ". Only the default lmforge recipe (rmsnorm, swiglu, rope, no qk_norm) maps onto "
            "Llama exactly."
        )
    tokenizer_path = checkpoint_tokenizer_file(checkpoint, tokenizer)
    loaded = load_tokenizer(tokenizer_path)
    if tokenizer_vocab_size(loaded) > model.config.vocab_size:
        raise ExportError(
            f"{tokenizer_path} has {tokenizer_vocab_size(loaded)} tokens but the model only "
            f"{model.config.vocab_size}: it is not this checkpoint's tokenizer"
        )
    special = special_token_ids(loaded)

    inputs = [checkpoint, tokenizer_path]
    with stage_output(out, STAGE, params={}, inputs=inputs) as stage:
        folder = stage.path
        safetensors.torch.save_file(
            llama_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"}
        )
        _write_json(
            folder / "config.json", llama_config(model.config, special.eot_id, special.pad_id)
        )
        _write_json(
            folder / "generation_config.json",
            {
                "bos_token_id": special.eot_id,
                "eos_token_id": special.eot_id,
                "pad_token_id": special.pad_id,
            },
        )
        shutil.copyfile(tokenizer_path, folder / "tokenizer.json")
        _write_json(
            folder / "tokenizer_config.json",
            tokenizer_config(EOT_TOKEN, PAD_TOKEN, model.config.max_seq_len),
        )
        _write_json(
            folder / "special_tokens_map.json",
            {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "pad_token": PAD_TOKEN},
        )
    return Path(out)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
