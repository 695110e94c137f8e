"""Recipes of the toy model and its LoRA fine-tune (plain dataclasses: importing them does not import torch)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from circuitflow.arithmetic import OPERATORS, Operator


@dataclass(frozen=True)
class ToyRecipe:
    """Hyper-parameters of the toy model and its training run (config key ``toy``)."""

    max_number: int = 99
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    rotary_pct: float = 0.25
    steps: int = 3000
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1
    heldout_fraction: float = 0.1
    checkpoint_steps: tuple[int, ...] = (0, 1000, 3000)
    operators: tuple[Operator, ...] = OPERATORS
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint_steps", tuple(sorted(set(self.checkpoint_steps) | {self.steps})))
        bad = [s for s in self.checkpoint_steps if s < 0 or s > self.steps]
        if bad:
            raise ValueError(f"toy.checkpoint_steps {bad} lie outside 0..toy.steps={self.steps}")
        if self.d_model % self.n_heads:
            raise ValueError(f"toy.d_model={self.d_model} must be divisible by toy.n_heads={self.n_heads}")


@dataclass(frozen=True)
class LoraRecipe:
    """A peft LoRA fine-tune of a toy checkpoint on some operators (config key ``adapter.train``)."""

    operators: tuple[Operator, ...] = ("add", "sub")
    steps: int = 100
    rank: int = 8
    alpha: float = 16.0
    lr: float = 3e-3
    batch_size: int = 256
    target_modules: tuple[str, ...] = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    seed: int = 0


def recipe_from_dict(cls, values: dict, where: str):
    """Build ``cls`` from a config mapping (lists become tuples); unknown keys raise a ValueError naming ``where``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
