"""Model files and resumable training checkpoints.

A model directory holds `model.safetensors` (weights; no pickle, safe to share) and
`model_config.json`. A training checkpoint `OUT/checkpoints/step-NNNNNN/` is a model directory
plus `training_state.pt` (optimizer, schedule, loader and RNG state): it is written under a
temporary name and renamed, so a crash never leaves a checkpoint that looks complete, and it is
read back with `torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers, so opening a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from lmforge.manifest import replace_directory
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TRAINING_STATE_FILE = "training_state.pt"
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def save_model(model: GPT, directory: str | Path) -> None:
    """Write `model.safetensors` and `model_config.json` into `directory` (created if needed).

    Pass the plain model, not a DDP or compiled wrapper, so the weight names stay loadable.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # save_model (not save_file) stores a tied embedding/head matrix once and records the alias.
    safetensors.torch.save_model(model, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> GPT:
    """The GPT saved in `directory` (a training output or one of its checkpoints), in eval mode.

    Raises FileNotFoundError when either file is missing, ValueError for an invalid config.
    """
    directory = Path(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory} has no {name}: pass a training output directory or one of its "
                f"{CHECKPOINTS_DIR}/step-NNNNNN directories"
            )
    config = ModelConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    device = torch.device(device)
    with device:  # build directly on the target device: no second copy of the weights
        model = GPT(config)
    safetensors.torch.load_model(model, str(directory / WEIGHTS_FILE), device=str(device))
    return model.eval()


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR / f"step-{step:06d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `out_dir/checkpoints`, oldest step first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := _STEP_DIR.match(path.name)) and (path / TRAINING_STATE_FILE).is_file()
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a training run, or None when it has none yet."""
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    out_dir: str | Path, step: int, model: GPT, training_state: dict[str, Any], keep: int
) -> Path:
    """Write `checkpoints/step-NNNNNN/` atomically and keep only the newest `keep` checkpoints.

    `training_state` must hold only tensors, numbers, strings and plain containers: it is read
    back with `torch.load(weights_only=True)`.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the checkpoint being written), got {keep}")
    final = checkpoint_dir(out_dir, step)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        save_model(model, tmp)
        torch.save(training_state, tmp / TRAINING_STATE_FILE)
        replace_directory(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def load_training_state(checkpoint: str | Path) -> dict[str, Any]:
    """The optimizer, schedule, loader and RNG state of a checkpoint, with tensors on the CPU.

    Only tensors and plain containers are accepted (weights_only=True): a file holding other
    objects raises pickle.UnpicklingError instead of executing them.
    """
    path = Path(checkpoint) / TRAINING_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint: it has no {path.name}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint_weights(model: nn.Module, checkpoint: str | Path) -> None:
    """Load a checkpoint's weights into an existing `model` in place (for resuming)."""
    device = next(model.parameters()).device
    safetensors.torch.load_model(model, str(Path(checkpoint) / WEIGHTS_FILE), device=str(device))
