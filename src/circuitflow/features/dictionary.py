"""Sparse dictionaries (docs/definitions.md#sparse-dictionaries): transcoders for MLPs and SAEs for attention.

A dictionary reads an input ``x`` ``[..., d_in]`` and writes a reconstruction ``[..., d_out]`` through
``n_features`` sparse features::

    pre = x @ W_enc + b_enc                  # [..., n_features], a feature's pre-activation
    f   = act(pre)                           # topk: the k largest of relu(pre); jumprelu: pre · [pre > θ]; relu
    out = f @ W_dec + b_dec (+ x @ W_skip)   # [..., d_out]

A *transcoder* for MLP ``l`` reads the MLP's input (``blocks.{l}.mlp.hook_in``, after the norm) and reconstructs its
output (``blocks.{l}.hook_mlp_out``), optionally with a linear skip ``W_skip``; an *SAE* for attention layer ``l``
reads and reconstructs the concatenated head outputs ``hook_z`` flattened to ``[..., n_heads · d_head]``, so each
feature's decoder row splits into one part per head.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

Site = Literal["mlp", "attn"]
Activation = Literal["topk", "jumprelu", "relu"]
SITES = ("mlp", "attn")
ACTIVATIONS = ("topk", "jumprelu", "relu")
WEIGHTS_FILE = "dictionary.safetensors"
CONFIG_FILE = "dictionary.json"


@dataclass(frozen=True)
class DictionaryInfo:
    """Where a dictionary sits and how it activates (saved next to its weights)."""

    site: Site
    layer: int
    activation: Activation
    k: int = 0  # topk only

    def __post_init__(self):
        if self.site not in SITES:
            raise ValueError(f"dictionary site must be one of {SITES}, not {self.site!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"dictionary activation must be one of {ACTIVATIONS}, not {self.activation!r}")
        if self.activation == "topk" and self.k < 1:
            raise ValueError(f"a topk dictionary needs k >= 1, got k={self.k}")

    @property
    def name(self) -> str:
        """``mlp{layer}`` or ``attn{layer}``: the dictionary's name in tables and graphs."""
        return f"{self.site}{self.layer}"


class SparseDictionary(nn.Module):
    """A transcoder (``site="mlp"``) or attention SAE (``site="attn"``); see the module docstring for the maps."""

    def __init__(self, info: DictionaryInfo, d_in: int, d_out: int, n_features: int, skip: bool = False,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.info = info
        self.W_enc = nn.Parameter(torch.zeros(d_in, n_features, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(n_features, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(n_features, d_out, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dtype))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out, dtype=dtype)) if skip else None
        self.threshold = nn.Parameter(torch.zeros(n_features, dtype=dtype)) if info.activation == "jumprelu" else None

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    @property
    def n_features(self) -> int:
        return self.W_enc.shape[1]

    def pre_activation(self, x: Tensor) -> Tensor:
        """``x @ W_enc + b_enc``: ``[..., d_in]`` -> ``[..., n_features]``."""
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """Feature activations from pre-activations (same shape; zero where a feature is off)."""
        if self.info.activation == "relu":
            return torch.relu(pre)
        if self.info.activation == "jumprelu":
            return pre * (pre > self.threshold)
        top = torch.relu(pre).topk(min(self.info.k, pre.shape[-1]), dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations ``[..., n_features]`` of inputs ``[..., d_in]``."""
        return self.activate(self.pre_activation(x))

    def decode(self, features: Tensor, x: Tensor | None = None) -> Tensor:
        """The reconstruction ``[..., d_out]`` from activations (and, with a skip connection, the input ``x``)."""
        out = features @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError(f"dictionary {self.info.name} has a skip connection: decode needs its input x")
            out = out + x @ self.W_skip
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x``'s target: ``decode(encode(x), x)``."""
        return self.decode(self.encode(x), x)

    # ------------------------------------------------------------------ native format
    def save(self, directory: Path | str) -> None:
        """Write ``dictionary.safetensors`` and ``dictionary.json`` into ``directory`` (created)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: p.detach().contiguous().cpu() for name, p in self.named_parameters()}
        save_file(tensors, directory / WEIGHTS_FILE)
        meta = dict(asdict(self.info), d_in=self.d_in, d_out=self.d_out, n_features=self.n_features,
                    skip=self.W_skip is not None, dtype=str(self.W_enc.dtype).removeprefix("torch."))
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path | str, device: str | torch.device = "cpu") -> SparseDictionary:
        """Read a dictionary written by :meth:`save`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text())
        info = DictionaryInfo(meta["site"], int(meta["layer"]), meta["activation"], int(meta.get("k", 0)))
        dictionary = cls(info, meta["d_in"], meta["d_out"], meta["n_features"], skip=meta["skip"],
                         dtype=getattr(torch, meta["dtype"]))
        dictionary.load_state_dict(load_file(directory / WEIGHTS_FILE))
        return dictionary.to(device)


def hook_names(info: DictionaryInfo) -> tuple[str, str]:
    """The bridge hooks a dictionary reads from and reconstructs: ``(input hook, target hook)``."""
    if info.site == "mlp":
        return f"blocks.{info.layer}.mlp.hook_in", f"blocks.{info.layer}.hook_mlp_out"
    return f"blocks.{info.layer}.attn.hook_z", f"blocks.{info.layer}.attn.hook_z"


def save_dictionaries(dictionaries: dict[str, SparseDictionary], folder: Path | str) -> None:
    """Save each dictionary into ``folder/{name}`` (native format)."""
    for name, dictionary in dictionaries.items():
        dictionary.save(Path(folder) / name)


def load_dictionaries(folder: Path | str, device: str | torch.device = "cpu") -> dict[str, SparseDictionary]:
    """Every dictionary saved by :func:`save_dictionaries` in ``folder``, by name, in forward order."""
    found = {path.name: SparseDictionary.load(path, device) for path in Path(folder).iterdir()
             if (path / CONFIG_FILE).exists()}
    if not found:
        raise ValueError(f"{folder}: no dictionaries ({CONFIG_FILE} in a subfolder); rerun the dictionaries rule")
    return dict(sorted(found.items(), key=lambda item: (item[1].info.layer, item[1].info.site == "mlp")))
