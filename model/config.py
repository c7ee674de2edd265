"""The shape of a GPT: one typed config, validated on construction, with named presets.

Defaults follow the modern small-LM recipe: RoPE positions, RMSNorm pre-norm, SwiGLU feed-forward,
an output head tied to the token embeddings. The alternatives stay one field away so that a
change in recipe is a config diff, not a code fork.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Norm = Literal["rmsnorm", "layernorm"]
Mlp = Literal["swiglu", "gelu"]
Position = Literal["rope", "learned"]

_CHOICES = {
    "norm": ("rmsnorm", "layernorm"),
    "mlp": ("swiglu", "gelu"),
    "position": ("rope", "learned"),
}


@dataclass
class ModelConfig:
    """Architecture of `lmforge.model.gpt.GPT`.

    `n_kv_head` < `n_head` gives grouped-query attention (each key/value head serves
    n_head // n_kv_head query heads); None means one key/value head per query head.
    `d_ff` None picks the usual hidden width: 4·d_model for GELU, and for SwiGLU 8/3·d_model
    rounded up to a multiple of 64 (three matrices instead of two keep the parameter count equal).
    Raises ValueError naming the field when a value cannot make a working model.
    """

    vocab_size: int
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None
    d_model: int = 128
    d_ff: int | None = None
    max_seq_len: int = 256
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qk_norm: bool = False
    norm: Norm = "rmsnorm"
    mlp: Mlp = "swiglu"
    position: Position = "rope"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None and isinstance(self.d_model, int):  # else _validate names d_model
            self.d_ff = default_d_ff(self.d_model, self.mlp)
        self._validate()

    def _validate(self) -> None:
        sizes = ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "max_seq_len")
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"ModelConfig.{name} must be a positive number, got {value!r}")
        for name in ("tie_embeddings", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"ModelConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"ModelConfig.{name} must be one of {', '.join(allowed)}; got {value!r}"
                )
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}: "
                "every attention head needs the same width"
            )
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}: "
                "grouped-query attention shares each key/value head among a whole number of "
                "query heads"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"head_dim={self.head_dim} (d_model / n_head) must be even for RoPE, "
                "which rotates pairs of features"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict` (e.g. of a parsed `model_config.json`); ValueError for anything
        but a mapping of known fields with vocab_size: an unknown key is a typo or a newer
        lmforge's field."""
        if not isinstance(values, dict):
            raise ValueError(f"a ModelConfig is an object of fields, not {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        if "vocab_size" not in values:
            raise ValueError("ModelConfig.vocab_size is missing")
        return cls(**values)

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides: Any) -> ModelConfig:
        """A named size (`tiny`, `small`, `medium`, `1b`) for `vocab_size`, with field overrides.

        Overrides that change the head count also reset the preset's n_kv_head, unless given.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) in overrides: {', '.join(unknown)}")
        base = dict(PRESETS[name])
        if "n_head" in overrides and "n_kv_head" not in overrides:
            base.pop("n_kv_head", None)
        return cls(vocab_size=vocab_size, **{**base, **overrides})


def default_d_ff(d_model: int, mlp: str) -> int:
    if mlp == "swiglu":
        return 64 * math.ceil(8 * d_model / 3 / 64)
    return 4 * d_model


# Sizes in the GPT-2 family's footsteps; parameter counts at a 50k vocabulary with tied embeddings.
PRESETS: dict[str, dict[str, Any]] = {
    # A CPU demo: learns visibly within a few minutes on two cores.
    "tiny": dict(n_layer=4, n_head=4, d_model=128, max_seq_len=256),
    # ~124M, GPT-2 small's shape.
    "small": dict(n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
    # ~355M, GPT-2 medium's shape.
    "medium": dict(n_layer=24, n_head=16, d_model=1024, max_seq_len=1024),
    # ~1.0B; GQA halves the KV cache at generation time, head_dim 128 suits flash attention.
    "1b": dict(n_layer=20, n_head=16, n_kv_head=8, d_model=2048, max_seq_len=2048),
}


Preset = Literal["tiny", "small", "medium", "1b"]
# Any vocabulary size works for checking a shape: none of the rules involve it.
_PROBE_VOCAB_SIZE = 512


class ModelSpec(BaseModel):
    """The model a run trains, as a user states it: a `preset` whose every shape field can be
    overridden. A field left None (null) keeps the preset's value; `resolve(vocab_size)` turns
    the spec into the concrete `ModelConfig` (the vocabulary comes from the shards). Shapes that
    cannot make a working model (d_model not divisible by n_head, n_head not divisible by
    n_kv_head, an odd RoPE head width) are refused on construction, naming the fields.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Preset = Field(
        "tiny",
        description="Starting shape: tiny (CPU demo, ~1M parameters), small (~124M), medium "
        "(~355M), 1b (~1.0B); the fields below override it.",
    )
    n_layer: int | None = Field(None, ge=1, le=1024, description="Transformer blocks (depth).")
    d_model: int | None = Field(None, ge=1, description="Width: the residual stream's size.")
    n_head: int | None = Field(None, ge=1, description="Attention (query) heads per block.")
    n_kv_head: int | None = Field(
        None, ge=1,
        description="Key/value heads (grouped-query attention when fewer than n_head); "
        "default: one per query head, unless the preset sets it.",
    )  # fmt: skip
    d_ff: int | None = Field(
        None, ge=1,
        description="Feed-forward hidden size; default: 4 x d_model for gelu, 8/3 x d_model "
        "(rounded up to 64) for swiglu.",
    )  # fmt: skip
    max_seq_len: int | None = Field(None, ge=8, description="Longest context the model can read.")
    mlp: Mlp | None = Field(None, description="Feed-forward kind: swiglu or gelu.")
    norm: Norm | None = Field(None, description="Normalisation: rmsnorm or layernorm.")
    qk_norm: bool | None = Field(None, description="Normalise queries and keys per head.")
    position: Position | None = Field(
        None, description="Positions: rope (rotary) or learned embeddings."
    )
    rope_theta: float | None = Field(None, gt=0.0, description="RoPE base frequency.")
    tie_embeddings: bool | None = Field(
        None, description="Share the output head's weights with the token embeddings."
    )
    norm_eps: float | None = Field(None, gt=0.0, description="Epsilon of the norms.")
    init_std: float | None = Field(None, gt=0.0, description="Std of the initial weights.")

    @model_validator(mode="after")
    def _check_shape(self) -> ModelSpec:
        self.resolve(_PROBE_VOCAB_SIZE)  # ModelConfig's ValueError names the fields at fault
        return self

    def overrides(self) -> dict[str, Any]:
        """The fields set here, which replace the preset's."""
        return {k: v for k, v in self if k != "preset" and v is not None}

    def resolve(self, vocab_size: int) -> ModelConfig:
        """The concrete shape for a vocabulary of `vocab_size` tokens."""
        return ModelConfig.preset(self.preset, vocab_size, **self.overrides())
