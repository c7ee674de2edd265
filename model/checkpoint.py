"""Model files and resumable training checkpoints.

A model directory holds `model.safetensors` (weights; no pickle, safe to share) and
`model_config.json`. A training checkpoint `OUT/checkpoints/step-NNNNNN/` is a model directory
plus `training_state.pt` (optimizer, schedule, loader and RNG state): it is written under a
temporary name and renamed, so a crash never leaves a checkpoint that looks complete, and it is
read back with `torch.load(weights_only=True)`, which refuses anything but tensors and plain
containers, so opening a checkpoint cannot run code.

Reading never lets a library's parser error through: a folder that is missing or lacks a file
raises FileNotFoundError, a file that is truncated, garbage or not lmforge's raises
`CheckpointError` naming the file and what to do.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from lmforge.errors import LmforgeError, OutputRefused, one_line
from lmforge.manifest import replace_directory
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TRAINING_STATE_FILE = "training_state.pt"
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
WHAT_TO_PASS = "pass a training output folder or one of its checkpoints/step-NNNNNN folders"


class CheckpointError(LmforgeError, ValueError):
    """A checkpoint file that cannot be read: truncated, garbage, or not written by lmforge."""


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

    Raises FileNotFoundError when the folder or either file is missing, CheckpointError when a
    file is damaged or the weights do not fit the config (see `check_model_dir`).
    """
    directory = Path(directory)
    config = check_model_dir(directory)
    device = torch.device(device)
    with device:  # build directly on the target device: no second copy of the weights
        model = GPT(config)
    _load_weights(model, directory / WEIGHTS_FILE)
    return model.eval()


def check_model_dir(directory: str | Path) -> ModelConfig:
    """Check, without reading the weights, that `directory` holds a loadable model; return its
    config. Cheap: the config is parsed and the weights file's header is read, which also
    tells a truncated file (its header promises more bytes than are there).

    Raises FileNotFoundError for a missing folder or file, CheckpointError for a file that is
    not a valid `model_config.json` or safetensors file.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint folder {directory} does not exist: {WHAT_TO_PASS}")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, not a checkpoint folder: {WHAT_TO_PASS}")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name}: {WHAT_TO_PASS}")
    config = read_model_config(directory / CONFIG_FILE)
    try:
        with safetensors.safe_open(str(directory / WEIGHTS_FILE), framework="pt"):
            pass
    except safetensors.SafetensorError as error:
        raise damaged(directory / WEIGHTS_FILE, error) from error
    return config


def read_model_config(path: Path) -> ModelConfig:
    """The ModelConfig in a `model_config.json`; CheckpointError naming the file when it is not
    JSON or not a valid config."""
    try:
        return ModelConfig.from_dict(json.loads(path.read_bytes()))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise CheckpointError(
            f"{path} is not a valid model config ({one_line(error, 200)}): restore it from the "
            "training run that wrote it, or use another checkpoint"
        ) from error


def damaged(path: Path, error: BaseException) -> CheckpointError:
    """The error for a checkpoint file that exists but cannot be read."""
    return CheckpointError(
        f"{path} is damaged or incomplete ({one_line(error, 200)}): copy it again, or use another "
        "checkpoint (e.g. an earlier one under checkpoints/)"
    )


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load a safetensors file into `model` in place, on the device of its parameters."""
    device = next(model.parameters()).device
    try:
        safetensors.torch.load_model(model, str(path), device=str(device))
    except safetensors.SafetensorError as error:
        raise damaged(path, error) from error
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:  # missing, unexpected or misshapen tensors
        raise CheckpointError(
            f"{path} does not hold the weights {path.parent / CONFIG_FILE} describes "
            f"({one_line(error, 200)}): use the config saved with these weights, or another "
            "checkpoint"
        ) from error


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
        replace_directory(tmp, final, claim_checkpoint_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def claim_checkpoint_dir(path: Path) -> None:
    """Refuse (OutputRefused) to replace `path` unless it holds nothing but checkpoint files:
    a rerun may rewrite its own `step-NNNNNN`, never a folder someone else put there."""
    own = {WEIGHTS_FILE, CONFIG_FILE, TRAINING_STATE_FILE}
    foreign = sorted(p.name for p in path.iterdir() if p.name not in own) if path.is_dir() else []
    if not path.is_dir() or foreign:
        what = f"holds {', '.join(foreign)}" if foreign else "is not a folder"
        raise OutputRefused(
            f"checkpoint folder {path} {what}, which lmforge did not write there: move it away "
            "to let training write this checkpoint"
        )


def load_training_state(checkpoint: str | Path) -> dict[str, Any]:
    """The optimizer, schedule, loader and RNG state of a checkpoint, with tensors on the CPU.

    Only tensors and plain containers are accepted (weights_only=True): a file holding other
    objects is refused with CheckpointError instead of executed, as is a truncated or garbage
    file; FileNotFoundError when the checkpoint has no training state.
    """
    path = Path(checkpoint) / TRAINING_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint: it has no {path.name}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # unreadable (permissions, I/O): the OS's message names the file
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # torch's words for a refused object
            raise damaged(path, error) from error
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain containers, which "
            "lmforge never writes: refused, since loading it could run code; use a checkpoint "
            "lmforge wrote"
        ) from error
    except Exception as error:  # noqa: BLE001 - the unpickler trips on garbage in many ways
        # (EOFError, KeyError, IndexError, RuntimeError from the zip reader): all mean damage.
        raise damaged(path, error) from error


def load_checkpoint_weights(model: nn.Module, checkpoint: str | Path) -> None:
    """Load a checkpoint's weights into an existing `model` in place (for resuming)."""
    _load_weights(model, Path(checkpoint) / WEIGHTS_FILE)
