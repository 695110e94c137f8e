"""What the circuit engine needs to know about a ``TransformerBridge``: hook names, per-head weights and norms.

The engine never runs the slow split-input forward (per-head copies of the residual stream). Instead it uses the
unsplit forward and the linear structure of attention inputs: head h's query is ``q_h = norm(x) @ W_Q[h] + b``, so

* the gradient at head h's *query input* x is ``J_norm(x)^T (W_Q[h] ∂L/∂q_h)``, recovered from the d_head-wide
  gradient at ``hook_q`` and one vector-Jacobian product of the norm;
* giving head h's query input an extra ``D_h`` only changes ``q_h`` by ``(norm(x + D_h) − norm(x)) @ W_Q[h]``.

The same holds for keys and values per key/value head (so grouped-query attention needs no ungrouping) and for the
MLP input. Weights are read by probing the bridge's linear submodules with the identity matrix, which works
whatever their storage layout (``nn.Linear``, GPT-2's ``Conv1D``, fused ``query_key_value``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from circuitflow.models.contract import check_structure, compute_device, loaded_weights


@dataclass
class LayerAnatomy:
    """One block: norms feeding attention and MLP, and per-head weights (shapes in the names)."""

    attn_norm: nn.Module
    mlp_norm: nn.Module
    W_Q: Tensor  # [n_heads, d_model, d_head]
    W_K: Tensor  # [n_kv_heads, d_model, d_head]
    W_V: Tensor  # [n_kv_heads, d_model, d_head]
    W_O: Tensor  # [n_heads, d_head, d_model]
    hooks: dict[str, str]  # role -> hook name, see ``Anatomy.from_bridge``


@dataclass
class Anatomy:
    """Shape facts and per-layer anatomy of a bridge, plus the hook names the engine reads and writes."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    parallel: bool  # attention and MLP read the same layer input (GPT-NeoX, GPT-J)
    layers: list[LayerAnatomy]
    input_hook: str  # the residual stream entering block 0 (token + positional embedding): the input node
    final_hook: str  # the residual stream entering the final norm: the logits node's input

    @classmethod
    def from_bridge(cls, bridge) -> Anatomy:
        """Read the anatomy of a ``TransformerBridge`` (booted without compatibility mode; its structure is checked
        first, :func:`circuitflow.models.contract.check_structure`)."""
        check_structure(bridge)
        cfg = bridge.cfg
        n_heads = int(cfg.n_heads)
        n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
        d_head = int(cfg.d_head)
        layers = []
        for index, block in enumerate(bridge.blocks):
            has_ln2 = hasattr(block, "ln2")
            p = f"blocks.{index}"
            hooks = dict(resid_in=f"{p}.hook_in", attn_norm_in=f"{p}.ln1.hook_in",
                         mlp_norm_in=f"{p}.{'ln2' if has_ln2 else 'ln1'}.hook_in", pattern=f"{p}.attn.hook_pattern",
                         q=f"{p}.attn.hook_q", k=f"{p}.attn.hook_k", v=f"{p}.attn.hook_v", z=f"{p}.attn.hook_z",
                         attn_out=f"{p}.hook_attn_out", mlp_in=f"{p}.mlp.hook_in", mlp_out=f"{p}.hook_mlp_out",
                         mlp_post=f"{p}.mlp.hook_post")
            attn = block.attn
            layers.append(LayerAnatomy(
                attn_norm=standalone(_original(block.ln1)),
                mlp_norm=standalone(_original(block.ln2 if has_ln2 else block.ln1)),
                W_Q=probe_rows(attn.q, int(cfg.d_model)).unflatten(1, (n_heads, d_head)).transpose(0, 1),
                W_K=probe_rows(attn.k, int(cfg.d_model)).unflatten(1, (n_kv, d_head)).transpose(0, 1),
                W_V=probe_rows(attn.v, int(cfg.d_model)).unflatten(1, (n_kv, d_head)).transpose(0, 1),
                W_O=probe_rows(attn.o, n_heads * d_head).unflatten(0, (n_heads, d_head)),
                hooks=hooks,
            ))
        return cls(n_layers=len(layers), n_heads=n_heads, n_kv_heads=n_kv, d_model=int(cfg.d_model), d_head=d_head,
                   d_mlp=int(cfg.d_mlp), parallel=bool(getattr(cfg, "parallel_attn_mlp", False)), layers=layers,
                   input_hook="blocks.0.hook_in", final_hook="ln_final.hook_in")

    @property
    def hook_names(self) -> list[str]:
        """Every hook the engine reads or writes."""
        return [self.input_hook, self.final_hook, *(name for la in self.layers for name in la.hooks.values())]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def _original(module: nn.Module) -> nn.Module:
    """The wrapped HF module of a bridge component (calling it fires no hooks)."""
    return getattr(module, "original_component", None) or getattr(module, "_original_component", module)


def standalone(module: nn.Module) -> nn.Module:
    """``module`` itself, or, where accelerate dispatched it (``device_map``), a hook-free copy with its weights
    loaded on the device it computes on. The engine calls norms inside ``torch.func`` transforms, which accelerate's
    offload hooks do not survive; norms are small, so the copy costs nothing."""
    hooked = [sub for sub in module.modules() if "_hf_hook" in vars(sub)]
    if not hooked:
        return module
    device = compute_device(module)
    memo = {id(sub._hf_hook): None for sub in hooked}  # copy no hook (an offload hook holds the offloaded weights)
    with loaded_weights(module):
        clone = copy.deepcopy(module, memo)
    for sub in clone.modules():
        for name in ("_hf_hook", "_old_forward", "forward"):  # back to the class's own forward
            vars(sub).pop(name, None)
    return clone.to(device)


@torch.no_grad()
def probe_rows(linear: nn.Module, d_in: int, rows: Tensor | None = None) -> Tensor:
    """Rows ``rows`` (all when None) of the ``[d_in, d_out]`` matrix W of an affine module f, f(x) = x @ W + f(0):
    e.g. the output weights of chosen MLP neurons."""
    device = compute_device(linear)  # weights of an offloaded module live on ``meta``
    eye = torch.eye(d_in, dtype=next(linear.parameters()).dtype, device=device)
    if rows is not None:
        eye = eye[rows.to(device)]
    return (linear(eye) - linear(torch.zeros_like(eye[:1]))).detach()


def norm_vjp(norm: nn.Module, x: Tensor, cotangent: Tensor) -> Tensor:
    """``J_norm(x)^T c`` for each of several cotangents: x is ``[batch, pos, d]``, cotangent ``[batch, pos, n, d]``;
    returns ``[batch, pos, n, d]`` (the gradient at the norm's input for each of n consumers of its output)."""
    expanded = x.detach().unsqueeze(2).expand_as(cotangent)
    _, vjp = torch.func.vjp(norm, expanded)
    return vjp(cotangent.to(x.dtype))[0]


def normed_shift(norm: nn.Module, x: Tensor, shift: Tensor) -> Tensor:
    """``norm(x + shift_n) − norm(x)`` for ``x`` ``[batch, pos, d]`` and ``shift`` ``[batch, pos, n, d]``."""
    return norm(x.unsqueeze(2) + shift) - norm(x).unsqueeze(2)
