"""Supervised instruction fine-tuning of a pretrained GPT:
`finetune_instruct(base_model, data, out_dir, InstructConfig(...))`.

Records (Alpaca-style or chat messages, see `lmforge.tasks.finetune.data`) are rendered with the
prompt template, tokenized with loss on response tokens only, optionally packed into full rows,
and trained on either every weight or, with `lora_rank > 0`, LoRA adapters only (merged into the
weights at the end). A held-out share of the records measures the response-token loss before
and after training and gets greedy responses generated for its prompts.

Output directory (atomic, with a manifest): the fine-tuned model (`model.safetensors`,
`model_config.json`, `tokenizer.json` — loadable by `load_model`), `lora_adapter.safetensors`
and `lora.json` when LoRA was used, `samples.jsonl` (prompt, reference, response) and
`metrics.json`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from lmforge.manifest import claim_output_dir, read_manifest, stage_output
from lmforge.model.checkpoint import load_model, save_model
from lmforge.model.gpt import GPT
from lmforge.model.lora import DEFAULT_TARGETS, LoRAConfig, apply_lora, lora_state_dict, merge_lora
from lmforge.model.runtime import LogCallback, autocast_context, build_optimizer, resolve_device
from lmforge.model.schedule import LRSchedule
from lmforge.model.shard_format import TOKENIZER_FILE
from lmforge.tasks.finetune.data import (
    IGNORE_INDEX,
    FinetuneDataError,
    Segment,
    TokenizedExample,
    load_instruction_records,
    pack_examples,
    pad_batch,
    prompt_of,
    reference_of,
    tokenize_example,
)
from lmforge.tasks.finetune.steps import MetricsHistory, optimizer_step
from lmforge.tasks.tokens.tokenizer import load_tokenizer, special_token_ids

ADAPTER_FILE = "lora_adapter.safetensors"
LORA_CONFIG_FILE = "lora.json"


class InstructConfig(BaseModel):
    """How a pretrained model is instruction-tuned: example length and packing, the
    optimisation, full or LoRA training, the held-out share and the responses sampled from it.
    Examples longer than max_len are cut at the end. Invalid values and combinations raise
    ValidationError (a ValueError) naming the field, before any work.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_len: int | None = Field(
        None, ge=8, description="Tokens per example and per packed row; empty: the model's context."
    )
    pack: bool = Field(True, description="Pack several examples into each row (fewer pad tokens).")
    epochs: int = Field(3, ge=1, description="Passes over the training records.")
    batch_size: int = Field(8, ge=1, description="Rows per optimizer step.")
    lr: float = Field(3e-4, gt=0.0, description="Peak learning rate (warmup, then cosine decay).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay (2-D weights only).")
    warmup_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the steps spent warming the learning rate up."
    )
    grad_clip: float = Field(1.0, ge=0.0, description="Gradient norm clip; 0: no clipping.")
    lora_rank: int = Field(
        0, ge=0, description="LoRA rank; 0 fine-tunes every weight, > 0 trains adapters only."
    )
    lora_alpha: float = Field(16.0, gt=0.0, description="LoRA scale: updates scale by alpha/rank.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    lora_targets: tuple[str, ...] = Field(
        DEFAULT_TARGETS, min_length=1,
        description="Linear layers to adapt, by name (qkv, out_proj, gate_up, up, down).",
    )  # fmt: skip
    val_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="Share of records held out for loss and sample responses."
    )
    num_samples: int = Field(5, ge=0, description="Held-out prompts answered after training.")
    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per sample response.")
    seed: int = Field(0, ge=0, description="Seed of the split and batch order.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    log_every: int = Field(5, ge=1, description="Training loss every N steps (and at the end).")

    def lora_config(self) -> LoRAConfig:
        return LoRAConfig(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets)


@dataclass
class InstructResult:
    """Response-token losses on the held-out records before and after, and generated samples."""

    out_dir: Path
    val_loss_before: float
    val_loss_after: float
    train_examples: int
    val_examples: int
    train_rows: int
    trained_tokens: int
    steps: int
    trainable_parameters: int
    total_parameters: int
    lora_layers: list[str]
    samples: list[dict[str, str]]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            "val_response_loss_before": self.val_loss_before,
            "val_response_loss": self.val_loss_after,
            "trainable_parameters": float(self.trainable_parameters),
        }


def response_loss(
    model: GPT,
    rows: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    autocast,
) -> float:
    """Mean cross-entropy per response token over `rows` (prompt and padding carry no loss)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(rows), batch_size):
            inputs, labels = pad_batch(rows[first : first + batch_size], pad_id)
            x = torch.tensor(inputs, device=device)
            y = torch.tensor(labels, device=device)
            with autocast:
                logits = model(x)
            total += F.cross_entropy(
                logits.float().flatten(0, 1),
                y.flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(1, count)


def generate_responses(
    model: GPT,
    tokenizer,
    records: Sequence[list[Segment]],
    max_new_tokens: int,
    device: torch.device,
) -> list[dict[str, str]]:
    """Greedy responses to each record's prompt, stopping at `<|endoftext|>`."""
    eot_id = special_token_ids(tokenizer).eot_id
    window = model.config.max_seq_len
    samples = []
    model.eval()
    for segments in records:
        prompt = prompt_of(segments)
        # Keep the prompt's end (where the response starts) when it is too long for the window.
        ids = tokenizer.encode(prompt).ids[-max(1, window - max_new_tokens) :]
        idx = torch.tensor([ids], device=device)
        out = model.generate(idx, max_new_tokens, temperature=0.0, eos_id=eot_id)[0, len(ids) :]
        new = [token for token in out.tolist() if token != eot_id]
        samples.append(
            {
                "prompt": prompt,
                "reference": reference_of(segments),
                "response": tokenizer.decode(new),
            }
        )
    return samples


STAGE = "finetune_instruct"


def finetune_instruct(
    base_model: str | Path,
    data: str | Path,
    out_dir: str | Path,
    config: InstructConfig = InstructConfig(),
    on_log: LogCallback | None = None,
) -> InstructResult:
    """Fine-tune the training output `base_model` on the instruction records in `data`; write
    `out_dir` (see module doc).

    on_log(step, metrics) gets {"loss", "lr"} every log_every steps and {"val_response_loss"}
    after every epoch. Raises FinetuneDataError for unusable data (and when no record keeps a
    response token within max_len), FileNotFoundError/ManifestError for a base model that is
    not a finished training output, ValueError for LoRA targets that match no layer.
    """
    wall_start = time.perf_counter()
    log = MetricsHistory(on_log)
    # refused before any work unless out_dir may receive this stage's output, clear of the inputs
    claim_output_dir(out_dir, STAGE, [base_model, data])

    base_dir = Path(base_model)
    read_manifest(base_dir)
    tokenizer = load_tokenizer(base_dir / TOKENIZER_FILE)
    pad_id = special_token_ids(tokenizer).pad_id
    records = load_instruction_records(data)
    if len(records) < 2:
        raise FinetuneDataError(f"{data}: need at least 2 records (one is held out)")
    order = list(range(len(records)))
    random.Random(config.seed).shuffle(order)
    held = min(len(records) - 1, max(1, round(config.val_fraction * len(records))))
    val_records = [records[i] for i in order[:held]]
    train_records = [records[i] for i in order[held:]]

    device = resolve_device(config.device)
    autocast = autocast_context(device, "auto")
    torch.manual_seed(config.seed)
    model = load_model(base_dir, device=device)
    max_len = min(config.max_len or model.config.max_seq_len, model.config.max_seq_len)
    train_examples = [e for r in train_records if (e := tokenize_example(tokenizer, r, max_len))]
    val_examples = [e for r in val_records if (e := tokenize_example(tokenizer, r, max_len))]
    if not train_examples or not val_examples:
        raise FinetuneDataError(
            f"{data}: no response token survives in the training or held-out records at "
            f"max_len={max_len}; shorten the prompts or raise max_len"
        )
    rows = pack_examples(train_examples, max_len) if config.pack else train_examples

    adapted: list[str] = []
    if config.lora_rank:
        adapted = apply_lora(model, config.lora_config())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_parameters = sum(p.numel() for p in model.parameters())
    val_before = response_loss(model, val_examples, config.batch_size, pad_id, device, autocast)
    log(0, {"val_response_loss": val_before})

    model.train()
    optimizer = build_optimizer(model, config.lr, config.weight_decay, (0.9, 0.95), device)
    total = math.ceil(len(rows) / config.batch_size) * config.epochs
    schedule = LRSchedule(config.lr, config.lr / 10, int(config.warmup_fraction * total), total)
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    val_after = val_before
    for _ in range(config.epochs):
        shuffled = torch.randperm(len(rows), generator=generator).tolist()
        for first in range(0, len(shuffled), config.batch_size):
            inputs, labels = pad_batch(
                [rows[i] for i in shuffled[first : first + config.batch_size]], pad_id
            )
            x = torch.tensor(inputs, device=device)
            y = torch.tensor(labels, device=device)
            lr = schedule(step)
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX
            )
            trainable_parameters = [p for p in model.parameters() if p.requires_grad]
            optimizer_step(optimizer, loss, lr, trainable_parameters, config.grad_clip)
            step += 1
            if step % config.log_every == 0 or step == total:
                log(step, {"loss": loss.item(), "lr": lr})
        val_after = response_loss(model, val_examples, config.batch_size, pad_id, device, autocast)
        log(step, {"val_response_loss": val_after})

    adapter = lora_state_dict(model)
    if config.lora_rank:
        merge_lora(model)
    samples = generate_responses(
        model, tokenizer, val_records[: config.num_samples], config.max_new_tokens, device
    )
    result = InstructResult(
        out_dir=Path(out_dir),
        val_loss_before=val_before,
        val_loss_after=val_after,
        train_examples=len(train_examples),
        val_examples=len(val_examples),
        train_rows=len(rows),
        trained_tokens=sum(e.trained_tokens for e in train_examples),
        steps=step,
        trainable_parameters=trainable,
        total_parameters=total_parameters,
        lora_layers=adapted,
        samples=samples,
        seconds=0.0,
        history=log.records,
    )
    write_instruct_output(config, result, model, base_dir, Path(data), adapter)
    result.seconds = time.perf_counter() - wall_start
    return result


def write_instruct_output(
    config: InstructConfig,
    result: InstructResult,
    model: GPT,
    base_dir: Path,
    data: Path,
    adapter: dict[str, torch.Tensor],
) -> None:
    """The stage directory: merged model, tokenizer, adapter (LoRA), samples, metrics, manifest."""
    paths = {"base_model": str(base_dir), "data": str(data), "out_dir": str(result.out_dir)}
    params = {**paths, **config.model_dump(mode="json")}
    with stage_output(result.out_dir, STAGE, params, inputs=[base_dir, data]) as stage:
        save_model(model, stage.path)
        shutil.copyfile(base_dir / TOKENIZER_FILE, stage.path / TOKENIZER_FILE)
        if adapter:
            safetensors.torch.save_file(adapter, str(stage.path / ADAPTER_FILE))
            lora: dict[str, Any] = {**config.lora_config().to_dict(), "layers": result.lora_layers}
            (stage.path / LORA_CONFIG_FILE).write_text(json.dumps(lora, indent=2) + "\n")
        with open(stage.path / "samples.jsonl", "w", encoding="utf-8") as handle:
            for sample in result.samples:
                handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
        (stage.path / "metrics.json").write_text(json.dumps(result.metrics(), indent=2) + "\n")
        stage.counts.update(result.metrics())
        stage.counts.update(
            train_examples=result.train_examples,
            val_examples=result.val_examples,
            train_rows=result.train_rows,
            trained_tokens=result.trained_tokens,
            steps=result.steps,
            total_parameters=result.total_parameters,
        )
