"""Neuron importance (paper §3): attribution patching on MLP hidden neurons at the last position with the IE
metric; a neuron's score is the mean plus the standard deviation of its per-prompt effect. Optionally the exact
per-neuron patching effect for chosen layers (vectorized: many neurons per forward pass), to validate it."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from circuitflow.circuits.data import PairBatch
from circuitflow.circuits.neurons import neuron_attribution
from circuitflow.circuits.tracing import Tracer
from circuitflow.localization.patching import last_position_neuron_patching
from circuitflow.metrics import ie


def exact_neuron_effects(tracer: Tracer, batches: Sequence[PairBatch], layer: int,
                         max_rows: int = 8192) -> torch.Tensor:
    """``[N, d_mlp]`` (float64): the IE of patching each neuron of ``layer`` alone at the last position (many
    neurons per forward pass, see :func:`last_position_neuron_patching`)."""
    neurons = torch.arange(tracer.anatomy.d_mlp)
    return torch.cat([last_position_neuron_patching(tracer, batch, layer, neurons, ie, max_rows=max_rows)
                      for batch in batches])


def neuron_table(tracer: Tracer, batches: Sequence[PairBatch], exact_layers: Sequence[int] = (),
                 progress: bool = True) -> pd.DataFrame:
    """One row per ``layer, neuron``: ``attribution_mean, attribution_std, importance`` (= mean + std over prompts)
    and ``exact_ie`` (mean exact patching IE; NaN for layers not in ``exact_layers``)."""
    scores = neuron_attribution(tracer.bridge, batches, ie, tracer=tracer, progress=progress).double()  # [N, L, d_mlp]
    a = tracer.anatomy
    mean, std = scores.mean(0), scores.std(0, unbiased=len(scores) > 1)
    exact = torch.full((a.n_layers, a.d_mlp), float("nan"), dtype=torch.float64)
    for layer in exact_layers:
        if not 0 <= layer < a.n_layers:
            raise ValueError(f"exact_neuron_layers: layer {layer} does not exist (the model has {a.n_layers})")
        exact[layer] = exact_neuron_effects(tracer, batches, layer).mean(0)
    layer_idx = torch.arange(a.n_layers).repeat_interleave(a.d_mlp)
    return pd.DataFrame(dict(layer=layer_idx.numpy(), neuron=torch.arange(a.d_mlp).repeat(a.n_layers).numpy(),
                             attribution_mean=mean.flatten().numpy(), attribution_std=std.flatten().numpy(),
                             importance=(mean + std).flatten().numpy(), exact_ie=exact.flatten().numpy()))
