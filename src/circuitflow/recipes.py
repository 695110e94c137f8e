"""Recipes of the toy model and its LoRA fine-tune (plain dataclasses: importing them does not import torch)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from circuitflow.arithmetic import OPERATORS, Operator

ARCHITECTURES = ("gpt_neox", "llama", "gpt2")
"""Toy architectures: GPT-NeoX (Pythia: rotary, parallel attention + MLP), Llama (grouped-query attention, RMSNorm,
gated MLP, sequential blocks) and GPT-2 (learned positional embeddings, sequential blocks)."""

LORA_TARGETS = {
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
"""Every attention and MLP projection of each toy architecture (module names as peft matches them)."""


@dataclass(frozen=True)
class ToyRecipe:
    """Hyper-parameters of the toy model and its training run (config key ``models.<name>.recipe``).

    ``n_kv_heads`` (Llama only) is the number of key/value heads of grouped-query attention; ``None`` means
    ``n_heads / 2`` (``n_heads`` when that is odd). ``rotary_pct`` applies to GPT-NeoX only.
    """

    architecture: str = "gpt_neox"
    max_number: int = 99
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None
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
            raise ValueError(f"checkpoint_steps {bad} lie outside 0..steps={self.steps}; drop them or raise steps")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r} is unknown; use one of {', '.join(ARCHITECTURES)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}; change one of them")
        if self.architecture != "llama":
            if self.n_kv_heads is not None:
                raise ValueError(f"n_kv_heads applies to architecture llama only (this is {self.architecture}); "
                                 "remove it")
            return
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model}: a llama toy's head size d_model/n_heads="
                             f"{self.d_model // self.n_heads} must be even (rotary embeddings); change d_model or "
                             "n_heads")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads // 2 if self.n_heads % 2 == 0 else self.n_heads)
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (each "
                             "key/value head serves a whole group of query heads)")


@dataclass(frozen=True)
class LoraRecipe:
    """A peft LoRA fine-tune of a toy checkpoint on some operators (config key ``adapter.train``)."""

    operators: tuple[Operator, ...] = ("add", "sub")
    steps: int = 100
    rank: int = 8
    alpha: float = 16.0
    lr: float = 3e-3
    batch_size: int = 256
    target_modules: tuple[str, ...] | None = None
    seed: int = 0

    def targets(self, architecture: str) -> tuple[str, ...]:
        """The modules adapted: ``target_modules`` if given, else every projection of ``architecture``."""
        return self.target_modules if self.target_modules is not None else LORA_TARGETS[architecture]


def recipe_from_dict(cls, values: dict, where: str):
    """Build ``cls`` from a config mapping (lists become tuples); a bad key or value raises a one-line ValueError
    naming ``where``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except ValueError as err:
        raise ValueError(f"{where}.{err}") from None
