"""The paper's circuits and their faithfulness under per-position mean ablation.

Means: for every prompt position, the mean head output ``z`` and MLP hidden activation over all operand pairs of
all operators (legal or not). A circuit keeps a set of heads and of MLP neurons; every other head and neuron is
replaced by its mean at every position. The paper's circuit: the top heads by IE, all neurons of the layers before
the first heuristics layer, and the top-k neurons (by importance) of each layer from it on. Faithfulness per prompt
F = (NL(C) − NL(∅)) / (NL(M) − NL(∅)) with the normalized logit NL, averaged over prompts; ∅ ablates everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

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


@torch.no_grad()
def site_means(tracer: Tracer, token_batches: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-position means over the batches (all of one token length): ``z`` ``[L, p, head, d_head]`` and
    ``post`` ``[L, p, d_mlp]``."""
    z_sum, post_sum, count = 0, 0, 0
    for tokens in token_batches:
        _, z, post = site_activations(tracer, tokens)
        z_sum = z_sum + torch.stack(z).double().sum(1)
        post_sum = post_sum + torch.stack(post).double().sum(1)
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
        return torch.where(k, shaped, mean[:pos].unsqueeze(0).unsqueeze(0)).flatten(0, 1)

    hooks = []
    for i, la in enumerate(tracer.anatomy.layers):
        hooks.append((la.hooks["z"], partial(ablate, z_mean[i], head_keep[:, i])))
        hooks.append((la.hooks["mlp_post"], partial(ablate, post_mean[i], neuron_keep[:, i])))
    with tracer.bridge.hooks(fwd_hooks=hooks):
        logits = tracer.bridge(batch.clean.repeat(n_var, 1))
    return {name: metric_values(m, logits, logits, batch).double().cpu() for name, m in (("nl", nl),
                                                                                        ("accuracy", accuracy))}


def paper_circuits(n_layers: int, n_heads: int, d_mlp: int, heads: Sequence[tuple[int, int]], first_layer: int,
                   neuron_rank: Tensor, ks: Sequence[int], random_seeds: Sequence[int]) -> tuple[Tensor, Tensor, list]:
    """Masks of the paper's circuits: for each k, the top-k neurons per layer from ``first_layer`` on (``neuron_rank``
    ``[L, d_mlp]``: neuron indices best first) and, per seed, k random neurons per layer instead; plus the full model
    and the empty circuit first. Returns ``(head_keep [V, L, H], neuron_keep [V, L, d_mlp], labels)``."""
    head_keep, neuron_keep = [], []
    labels: list[dict] = [dict(circuit="full", k=d_mlp, seed=-1), dict(circuit="empty", k=0, seed=-1)]
    heads_mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for layer, head in heads:
        heads_mask[layer, head] = True
    head_keep += [torch.ones_like(heads_mask), torch.zeros_like(heads_mask)]
    neuron_keep += [torch.ones(n_layers, d_mlp, dtype=torch.bool), torch.zeros(n_layers, d_mlp, dtype=torch.bool)]
    for k in ks:
        choices = [("top", -1, neuron_rank[:, :k])]
        for seed in random_seeds:
            gen = torch.Generator().manual_seed(seed)
            choices.append(("random", seed, torch.stack([torch.randperm(d_mlp, generator=gen)[:k]
                                                         for _ in range(n_layers)])))
        for circuit, seed, chosen in choices:
            keep = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
            keep[:first_layer] = True
            keep[first_layer:].scatter_(1, chosen[first_layer:], True)
            head_keep.append(heads_mask)
            neuron_keep.append(keep)
            labels.append(dict(circuit=circuit, k=int(k), seed=seed))
    return torch.stack(head_keep), torch.stack(neuron_keep), labels


def faithfulness_table(tracer: Tracer, batches: Sequence[PairBatch], z_mean: Tensor, post_mean: Tensor,
                       head_keep: Tensor, neuron_keep: Tensor, labels: list[dict], chunk: int = 16) -> pd.DataFrame:
    """Per circuit: the labels, ``faithfulness`` (the paper's mean over prompts of the per-prompt F),
    ``faithfulness_median``, ``faithfulness_of_means`` (F of the prompt-averaged NL) and ``accuracy``."""
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
                       ie_maps: pd.DataFrame, neurons: pd.DataFrame, probes: pd.DataFrame, n_heads: int,
                       first_layer: int | None, probe_threshold: float, ks: Sequence[int],
                       random_seeds: Sequence[int]) -> pd.DataFrame:
    """The paper's circuits from the IE map (top ``n_heads`` heads), the neuron table (importance ranking) and the
    probes (the first heuristics layer unless ``first_layer`` is given), evaluated for every k in ``ks`` (values
    ≥ d_mlp dropped, d_mlp added) under per-position means over ``mean_tokens``. Returns
    :func:`faithfulness_table`'s rows plus ``heads`` and ``heuristics_layer`` columns."""
    a = tracer.anatomy
    z_mean, post_mean = site_means(tracer, mean_tokens)
    heads = top_heads(ie_maps, n_heads)
    first = heuristics_layer(probes, probe_threshold) if first_layer is None else first_layer
    first = min(first, a.n_layers - 1)
    importance = torch.tensor(neurons.sort_values(["layer", "neuron"])["importance"].to_numpy())
    rank = importance.view(a.n_layers, a.d_mlp).argsort(dim=1, descending=True)
    ks = sorted({k for k in ks if k < a.d_mlp} | {a.d_mlp})
    head_keep, neuron_keep, labels = paper_circuits(a.n_layers, a.n_heads, a.d_mlp, heads, first, rank, ks,
                                                    random_seeds)
    table = faithfulness_table(tracer, batches, z_mean, post_mean, head_keep, neuron_keep, labels)
    table["heads"] = ", ".join(f"L{layer}H{head}" for layer, head in heads)
    table["heuristics_layer"] = first
    return table
