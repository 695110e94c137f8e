"""Attention analysis of chosen heads (paper §3): where the last position attends over the whole operand grid, and
the OV circuit's transition between number tokens, W_U[:, i]ᵀ W_V W_O W_U[:, j] (norms ignored)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.arithmetic import SYMBOLS
from circuitflow.circuits.tracing import Tracer
from circuitflow.models.contract import loaded_weights

TARGETS = ("op1", "operator", "op2")


@torch.no_grad()
def attention_grid(tracer: Tracer, tokenizer, op: str, operand_max: int, heads: Sequence[tuple[int, int]],
                   batch_size: int = 512) -> pd.DataFrame:
    """Attention from the last position to op1, the operator and op2 for every ``x op y=`` with operands
    0..operand_max (legal or not): rows ``layer, head, op1, op2, target, attention``."""
    grid = np.array([(x, y) for x in range(operand_max + 1) for y in range(operand_max + 1)])
    tokens = torch.tensor(tokenizer([f"{x}{SYMBOLS[op]}{y}=" for x, y in grid])["input_ids"])
    if tokens.shape[1] < 4:
        raise ValueError("attention_grid: prompts must be at least 4 tokens (x op y =)")
    layers = sorted({layer for layer, _ in heads})
    out = {layer: [] for layer in layers}
    for start in range(0, len(tokens), batch_size):
        def keep(layer, tensor, hook):  # [b, head, query, key]
            out[layer].append(tensor[:, :, -1, -4:-1].float().cpu())

        hooks = [(tracer.anatomy.layers[layer].hooks["pattern"], partial(keep, layer)) for layer in layers]
        with tracer.bridge.hooks(fwd_hooks=hooks):
            tracer.bridge(tokens[start : start + batch_size].to(tracer.device))
    rows = []
    for layer, head in heads:
        pattern = torch.cat(out[layer])[:, head].numpy()  # [n, 3]
        for t, target in enumerate(TARGETS):
            rows.append(pd.DataFrame(dict(layer=layer, head=head, op1=grid[:, 0], op2=grid[:, 1], target=target,
                                          attention=pattern[:, t])))
    return pd.concat(rows, ignore_index=True)


def unembedding(bridge) -> Tensor:
    """``[d_model, vocab]`` unembedding matrix W_U of the bridge's model (loaded onto its execution device when
    accelerate offloaded it)."""
    head = bridge.original_model.get_output_embeddings()
    with loaded_weights(head):
        return head.weight.detach().T


@torch.no_grad()
def ov_transition(tracer: Tracer, layer: int, head: int, token_ids: Sequence[int]) -> Tensor:
    """``[n, n]``: W_U[:, i]ᵀ W_V W_O W_U[:, j] for the given (number) tokens; row = token written into the head's
    value input, column = token whose logit it raises."""
    la = tracer.anatomy.layers[layer]
    group = head // tracer.anatomy.group_size
    w_u = unembedding(tracer.bridge)[:, list(token_ids)].to(la.W_V.device, la.W_V.dtype)
    return (w_u.T @ la.W_V[group] @ la.W_O[head] @ w_u).float().cpu()


def ov_table(tracer: Tracer, tokenizer, heads: Sequence[tuple[int, int]], operand_max: int) -> pd.DataFrame:
    """:func:`ov_transition` over the number tokens ``0..operand_max`` for each head, as rows ``layer, head,
    input_number, output_number, value``."""
    numbers = np.arange(operand_max + 1)
    ids = tokenizer.convert_tokens_to_ids([str(n) for n in numbers])
    frames = [pd.DataFrame(dict(layer=layer, head=head, input_number=np.repeat(numbers, len(numbers)),
                                output_number=np.tile(numbers, len(numbers)),
                                value=ov_transition(tracer, layer, head, ids).flatten().numpy()))
              for layer, head in heads]
    columns = ["layer", "head", "input_number", "output_number", "value"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
