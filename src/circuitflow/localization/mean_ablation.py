"""The paper's circuits and their faithfulness under per-position mean ablation.

Means: for every prompt position, the mean head output ``z`` and MLP hidden activation over all operand pairs of
all operators (legal or not), behind the prompt set's own few-shot prefix
(:func:`circuitflow.prompts.all_pair_prompts`). A circuit keeps a set of heads and of MLP neurons; every other head
and neuron is replaced by its mean at every position. The paper's circuit: the top heads by IE, all neurons of the
layers before the first heuristics layer, and the top-k neurons (by importance) of each layer from it on — except a
layer whose neurons all score the same, which has no top-k and is kept whole (:func:`layer_selection`).
Faithfulness per prompt F = (NL(C) − NL(∅)) / (NL(M) − NL(∅)) with the normalized logit NL, averaged over prompts;
∅ ablates everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.circuits.data import PairBatch
from circuitflow.circuits.tracing import Tracer, metric_values
from circuitflow.localization.ie_maps import top_heads
from circuitflow.localization.patching import site_activations
from circuitflow.localization.probing import heuristics_layer
from circuitflow.metrics import accuracy, nl
from circuitflow.names import component_name


@torch.no_grad()
def site_means(tracer: Tracer, token_batches: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-position means over the batches (all of one token length): ``z`` ``[L, p, head, d_head]`` and
    ``post`` ``[L, p, d_mlp]``."""
    z_sum, post_sum, count = 0, 0, 0
    for tokens in token_batches:
        _, z, post = site_activations(tracer, tokens)
        z_sum = z_sum + torch.stack([t.to(tracer.device) for t in z]).double().sum(1)
        post_sum = post_sum + torch.stack([t.to(tracer.device) for t in post]).double().sum(1)
        count += tokens.shape[0]
    if count == 0:
        raise ValueError("the mean-ablation dataset is empty")
    dtype = tracer.anatomy.layers[0].W_O.dtype
    return (z_sum / count).to(dtype), (post_sum / count).to(dtype)


@torch.no_grad()
def ablated_metrics(tracer: Tracer, batch: PairBatch, z_mean: Tensor, post_mean: Tensor, head_keep: Tensor,
                    neuron_keep: Tensor) -> dict[str, Tensor]:
    """NL and accuracy ``[V, b]`` for V circuits: ``head_keep`` ``[V, L, H]`` and ``neuron_keep`` ``[V, L, d_mlp]``
    (bool) say what each circuit keeps; the rest is mean-ablated at every position."""
    n_var, b = head_keep.shape[0], len(batch)
    batch = batch.to(tracer.device)
    pos = batch.clean.shape[1]
    head_keep, neuron_keep = head_keep.to(tracer.device), neuron_keep.to(tracer.device)

    def ablate(mean, keep, tensor, hook):  # keep [V, units]; tensor [V*b, p, units, ...]
        shaped = tensor.unflatten(0, (n_var, b))
        k = keep.view(n_var, 1, 1, *keep.shape[1:], *([1] * (shaped.dim() - 4)))
        return torch.where(k.to(tensor.device), shaped, mean[:pos].to(tensor.device, tensor.dtype)[None, None]).flatten(0, 1)

    hooks = []
    for i, la in enumerate(tracer.anatomy.layers):
        hooks.append((la.hooks["z"], partial(ablate, z_mean[i], head_keep[:, i])))
        hooks.append((la.hooks["mlp_post"], partial(ablate, post_mean[i], neuron_keep[:, i])))
    with tracer.bridge.hooks(fwd_hooks=hooks):
        logits = tracer.bridge(batch.clean.repeat(n_var, 1))
    return {name: metric_values(m, logits, logits, batch).double().cpu() for name, m in (("nl", nl),
                                                                                        ("accuracy", accuracy))}


class CircuitMasks(NamedTuple):
    """V circuits: ``head_keep`` ``[V, L, H]`` and ``neuron_keep`` ``[V, L, d_mlp]`` (bool: what each keeps; the rest
    is mean-ablated) and one label dict per circuit (``circuit, k, seed``)."""

    head_keep: Tensor
    neuron_keep: Tensor
    labels: list[dict]


def no_signal_layers(importance: Tensor, tolerance: float = 1e-6) -> Tensor:
    """``[L]`` bool: layers of ``importance`` ``[L, d_mlp]`` whose neurons all score the same (within ``tolerance``
    of the layer's largest magnitude; all zero included), so that a ranking of them is arbitrary. Example: MLP 0 of a
    parallel-residual block at the last position reads only the ``=`` token, the same in clean and counterfactual
    prompts, so every one of its neurons has importance exactly 0."""
    spread = importance.amax(1) - importance.amin(1)
    return spread <= tolerance * importance.abs().amax(1)


def layer_selection(n_layers: int, first_layer: int, no_signal: Tensor) -> list[str]:
    """How each layer's neurons enter the paper's circuits: ``all (before the heuristics layer)``, ``all (no
    signal)`` (:func:`no_signal_layers`, from ``first_layer`` on) or ``top-k``.

    A layer without signal is kept whole, not skipped: its importance is measured at the last position only and says
    nothing about its neurons at the other positions (where, e.g., MLP 0 of a parallel block does the work the later
    layers read), so mean-ablating it would remove computation the scores never judged, and any k of its neurons
    would be an index block, not the top ones. Kept whole, it counts like the layers before the heuristics layer,
    for the top-k and the random circuits alike."""
    return ["all (before the heuristics layer)" if layer < first_layer else
            "all (no signal)" if bool(no_signal[layer]) else "top-k" for layer in range(n_layers)]


def paper_circuits(n_heads: int, heads: Sequence[tuple[int, int]], neuron_rank: Tensor, whole_layers: Tensor, *,
                   ks: Sequence[int], random_seeds: Sequence[int]) -> CircuitMasks:
    """Masks of the paper's circuits over ``neuron_rank`` ``[L, d_mlp]`` (each layer's neuron indices, best first):
    the full model and the empty circuit first; then for each k the kept ``heads`` with every neuron of the
    ``whole_layers`` ``[L]`` (bool) and the top-k neurons of each other layer, and per seed k random neurons of each
    other layer instead."""
    n_layers, d_mlp = neuron_rank.shape
    heads_mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for layer, head in heads:
        heads_mask[layer, head] = True
    head_keep = [torch.ones_like(heads_mask), torch.zeros_like(heads_mask)]
    neuron_keep = [torch.ones(n_layers, d_mlp, dtype=torch.bool), torch.zeros(n_layers, d_mlp, dtype=torch.bool)]
    labels: list[dict] = [dict(circuit="full", k=d_mlp, seed=-1), dict(circuit="empty", k=0, seed=-1)]
    for k in ks:
        choices = [("top", -1, neuron_rank[:, :k])]
        for seed in random_seeds:
            gen = torch.Generator().manual_seed(seed)
            choices.append(("random", seed, torch.stack([torch.randperm(d_mlp, generator=gen)[:k]
                                                         for _ in range(n_layers)])))
        for circuit, seed, chosen in choices:
            keep = torch.zeros(n_layers, d_mlp, dtype=torch.bool).scatter_(1, chosen, True)
            keep[whole_layers] = True
            head_keep.append(heads_mask)
            neuron_keep.append(keep)
            labels.append(dict(circuit=circuit, k=int(k), seed=seed))
    return CircuitMasks(torch.stack(head_keep), torch.stack(neuron_keep), labels)


def faithfulness_table(tracer: Tracer, batches: Sequence[PairBatch], z_mean: Tensor, post_mean: Tensor,
                       circuits: CircuitMasks, *, chunk: int = 16) -> pd.DataFrame:
    """Per circuit: the labels, ``faithfulness`` (the paper's mean over prompts of the per-prompt F),
    ``faithfulness_median``, ``faithfulness_of_means`` (F of the prompt-averaged NL) and ``accuracy``; ``chunk``
    circuits per forward pass."""
    head_keep, neuron_keep, labels = circuits
    nl_parts, acc_parts = [], []
    for batch in batches:
        per_batch_nl, per_batch_acc = [], []
        for start in range(0, len(head_keep), chunk):
            out = ablated_metrics(tracer, batch, z_mean, post_mean, head_keep[start : start + chunk],
                                  neuron_keep[start : start + chunk])
            per_batch_nl.append(out["nl"])
            per_batch_acc.append(out["accuracy"])
        nl_parts.append(torch.cat(per_batch_nl))
        acc_parts.append(torch.cat(per_batch_acc))
    nl_values, acc = torch.cat(nl_parts, 1), torch.cat(acc_parts, 1)  # [V, N]
    full, empty = nl_values[0], nl_values[1]
    gap = full - empty
    if not bool(torch.isfinite(nl_values).all()):
        raise FloatingPointError("NL is NaN or infinite for some prompt; check the model's dtype")
    per_prompt = (nl_values - empty) / torch.where(gap.abs() < 1e-12, torch.full_like(gap, np.nan), gap)
    frame = pd.DataFrame(labels)
    frame["faithfulness"] = torch.nanmean(per_prompt, 1).numpy()
    # the per-prompt ratio explodes on prompts whose full and empty NL nearly coincide: report robust summaries too
    frame["faithfulness_median"] = torch.nanmedian(per_prompt, 1).values.numpy()
    mean_nl = nl_values.mean(1)
    frame["faithfulness_of_means"] = ((mean_nl - mean_nl[1]) / (mean_nl[0] - mean_nl[1])).numpy()
    frame["accuracy"] = acc.mean(1).numpy()
    frame["n_neurons_per_layer"] = frame["k"]
    return frame


def paper_faithfulness(tracer: Tracer, batches: Sequence[PairBatch], mean_tokens: Sequence[Tensor],
                       ie_maps: pd.DataFrame, neurons: pd.DataFrame, *, probes: pd.DataFrame, n_heads: int,
                       first_layer: int | None, probe_threshold: float, ks: Sequence[int],
                       random_seeds: Sequence[int]) -> pd.DataFrame:
    """The paper's circuits from the IE map (top ``n_heads`` heads), the neuron table (importance ranking) and the
    probes (the first heuristics layer unless ``first_layer`` is given), evaluated for every k in ``ks`` (values
    ≥ d_mlp dropped, d_mlp added) under per-position means over ``mean_tokens``. Returns
    :func:`faithfulness_table`'s rows plus ``heads``, ``heuristics_layer`` and ``layer_selection`` (per layer, how
    its neurons enter the circuits: :func:`layer_selection`) columns."""
    a = tracer.anatomy
    z_mean, post_mean = site_means(tracer, mean_tokens)
    heads = top_heads(ie_maps, n_heads)
    first = heuristics_layer(probes, probe_threshold) if first_layer is None else first_layer
    first = min(first, a.n_layers - 1)
    importance = torch.tensor(neurons.sort_values(["layer", "neuron"])["importance"].to_numpy()).view(a.n_layers,
                                                                                                        a.d_mlp)
    roles = layer_selection(a.n_layers, first, no_signal_layers(importance))
    whole = torch.tensor([role != "top-k" for role in roles])
    ks = sorted({k for k in ks if k < a.d_mlp} | {a.d_mlp})
    circuits = paper_circuits(a.n_heads, heads, importance.argsort(dim=1, descending=True), whole, ks=ks,
                              random_seeds=random_seeds)
    table = faithfulness_table(tracer, batches, z_mean, post_mean, circuits)
    table["heads"] = ", ".join(component_name(layer, head) for layer, head in heads)
    table["heuristics_layer"] = first
    table["layer_selection"] = "; ".join(f"{component_name(layer)} {role}" for layer, role in enumerate(roles))
    return table
