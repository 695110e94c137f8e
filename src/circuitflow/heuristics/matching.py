"""Heuristic matching (Nikankin et al. 2025, §4): which heuristics does each MLP neuron implement?

For neuron n and every prompt p of the operand grid, the neuron's *activation* a_n(p) is its ``mlp.hook_post``
value at the last position, and its *result score* is a_n(p) · (W_out[n] · W_U[:, answer(p)]): how much its value
vector raises the true result's logit (norms ignored). Operand heuristics rank the prompts by the activation, result
heuristics by the result score. For a heuristic h associated with k prompts (:mod:`circuitflow.heuristics.families`),

    score(n, h) = |{the k top-ranked prompts of n} ∩ associated(h)| / k,

and n implements h when score ≥ the threshold (0.6 in the paper). A random ranking scores k/P on average
(``coverage``). With ``two_sided`` the lowest-ranked prompts count too (the higher of the two scores): the SwiGLU
neurons of Llama fire negative as well as positive. A neuron's *value sets*: the m result values with the highest
mean result score, as one heuristic "the result is one of these m values".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.circuits.anatomy import probe_rows
from circuitflow.circuits.data import indexed_token_batches
from circuitflow.circuits.tracing import Tracer
from circuitflow.heuristics.families import HeuristicSet, HeuristicSpec, disjoint_groups, heuristic_set
from circuitflow.localization.attention import unembedding


@torch.no_grad()
def neuron_activations(tracer: Tracer, tokenizer, texts: Sequence[str], neurons: Tensor,
                       batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """``([P, N], [P])``: the last-position ``mlp.hook_post`` activation of each neuron (``neurons`` ``[N, 2]``:
    layer, index) on each prompt, in the order of ``texts`` (prompts of several token lengths are fine), and the
    model's predicted next token (argmax at the last position)."""
    layers = sorted(set(neurons[:, 0].tolist()))
    names = {str(layer): tracer.anatomy.layers[layer].hooks["mlp_post"] for layer in layers}
    slot = torch.searchsorted(torch.tensor(layers), neurons[:, 0])  # each neuron's layer among those captured
    out, predicted = torch.empty(len(texts), len(neurons)), torch.empty(len(texts), dtype=torch.long)
    for rows, tokens in indexed_token_batches(tokenizer, list(texts), batch_size):
        logits, store = tracer.capture(tokens, names)
        last = torch.stack([store[str(layer)][:, -1] for layer in layers], dim=1).float().cpu()  # [b, layers, d_mlp]
        out[rows] = last[:, slot, neurons[:, 1]]
        predicted[rows] = logits[:, -1].argmax(-1).cpu()
    return out, predicted


@torch.no_grad()
def value_logits(tracer: Tracer, neurons: Tensor, token_ids: Tensor) -> Tensor:
    """``[N, T]``: W_out[n] · W_U[:, t], the logit of token t that neuron n's value vector writes per unit of
    activation (final norm ignored)."""
    w_u = unembedding(tracer.bridge)[:, token_ids.to(tracer.device)]
    out = torch.empty(len(neurons), len(token_ids))
    for layer in sorted(set(neurons[:, 0].tolist())):
        here = (neurons[:, 0] == layer).nonzero().squeeze(1)
        w_out = probe_rows(tracer.bridge.blocks[layer].mlp.out, tracer.anatomy.d_mlp, neurons[here, 1])
        out[here] = (w_out @ w_u.to(w_out.dtype)).float().cpu()
    return out


def constant_rows(values: Tensor, tolerance: float = 1e-5) -> Tensor:
    """``[N]`` bool: rows of ``values`` ``[N, P]`` whose spread is within float noise of their magnitude."""
    spread = values.amax(1) - values.amin(1)
    return spread <= tolerance * values.abs().amax(1)


def ranking(values: Tensor, seed: int = 0) -> Tensor:
    """``[N, P]``: each row's prompt indices from its largest value down. Ties are broken in a seeded random order,
    not by prompt order (which would favour small operands)."""
    perm = torch.randperm(values.shape[1], generator=torch.Generator().manual_seed(seed)).to(values.device)
    return perm[values[:, perm].argsort(dim=1, descending=True, stable=True)]


def match_scores(values: Tensor, masks: Tensor, order: Tensor | None = None, groups: Tensor | None = None) -> Tensor:
    """``[N, H]``: |top-k_h prompts by ``values[n]`` ∩ ``masks[h]``| / k_h with k_h = ``masks[h].sum()`` (> 0), for
    ``values`` ``[N, P]`` and ``masks`` ``[H, P]`` (bool); ``order`` may pass ``ranking(values)``. Heuristics of
    one group (``groups`` ``[H]``, from :func:`~circuitflow.heuristics.families.disjoint_groups` when not given)
    never share a prompt, so a group is scored at once from each neuron's top M prompts (M = its largest k): label
    them with their heuristic and count those within their heuristic's k — O(N·M) per group."""
    order = ranking(values) if order is None else order
    if groups is None:
        groups = torch.from_numpy(disjoint_groups(masks.cpu().numpy()))
    counts = masks.sum(1)
    n, p = values.shape
    out = torch.zeros(n, masks.shape[0], device=values.device)
    for group in groups.unique().tolist():
        members = (groups == group).nonzero().squeeze(1).to(values.device)
        member, prompt = masks[members].nonzero(as_tuple=True)  # each prompt at most once
        label = torch.full((p,), len(members), dtype=torch.long, device=values.device)  # last: no heuristic
        label[prompt] = member
        k_of_label = torch.cat([counts[members], counts.new_zeros(1)])
        top = int(counts[members].max())
        labels = label[order[:, :top]]  # [N, M]: the heuristic of each top-ranked prompt
        within = (torch.arange(top, device=values.device)[None] < k_of_label[labels]).float()
        hits = torch.zeros(n, len(members) + 1, device=values.device).scatter_add_(1, labels, within)
        out[:, members] = hits[:, :-1] / counts[members]
    return out.cpu()


def value_set_scores(values: Tensor, result_index: Tensor, sizes: Sequence[int], max_count: int,
                     min_count: int = 1, order: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per neuron and set size m: the score of "the result is one of the neuron's m favourite values" (those with
    the highest mean of ``values`` ``[N, P]``; ``result_index`` ``[P]`` numbers the distinct results). Returns
    ``(scores [N, len(sizes)], chosen [N, max(sizes)])`` (indices of the favourite values, best first); a set
    covering more than ``max_count`` or fewer than ``min_count`` prompts scores NaN."""
    n_values = int(result_index.max()) + 1
    per_value = torch.bincount(result_index, minlength=n_values)
    sums = values.new_zeros(values.shape[0], n_values).index_add_(1, result_index, values)
    chosen = (sums / per_value.clamp(min=1)).argsort(dim=1, descending=True, stable=True)[:, : max(sizes)]
    order = ranking(values) if order is None else order
    top_results = result_index[order[:, :max_count]]  # [N, max_count]: results of the top-ranked prompts
    scores = torch.full((values.shape[0], len(sizes)), float("nan"), device=values.device)
    for i, m in enumerate(sizes):
        if m >= n_values:
            continue
        k = per_value[chosen[:, :m]].sum(1)  # prompts whose result is in the set
        in_set = (top_results[:, :, None] == chosen[:, None, :m]).any(-1)
        hits = (in_set & (torch.arange(top_results.shape[1], device=values.device)[None] < k[:, None])).sum(1)
        scores[:, i] = torch.where((k <= max_count) & (k >= min_count), hits / k.clamp(min=1), torch.nan)
    return scores, chosen


@dataclass
class Classification:
    """The result of :func:`classify`: ``table`` (rows ``layer, neuron, heuristic, family, kind, score, coverage,
    matched``) and the prompts each named heuristic is associated with, ``masks`` (name -> bool ``[P]``)."""

    table: pd.DataFrame
    masks: dict[str, np.ndarray]

    def matches(self) -> pd.DataFrame:
        """The matched rows: ``layer, neuron, heuristic, family, score``."""
        return self.table[self.table["matched"]][["layer", "neuron", "heuristic", "family", "score"]]


def classify(activations: Tensor, direct_logits: Tensor, neurons: Tensor, op1: np.ndarray, op2: np.ndarray,
             result: np.ndarray, spec: HeuristicSpec = HeuristicSpec(), threshold: float = 0.6,
             two_sided: bool = False, keep_best: int = 3, device: str | torch.device = "cpu") -> Classification:
    """Score every neuron against every heuristic and keep, per neuron, the matched heuristics (score ≥
    ``threshold``) and at least its ``keep_best`` best ones. A neuron whose activation is the same on every prompt
    (e.g. a first-layer neuron of a parallel-attention model at the last position, which sees only the ``=``
    token) responds to no heuristic and gets no row. ``activations`` ``[P, N]`` from
    :func:`neuron_activations`; ``direct_logits`` ``[P, N]`` = W_out[n] · W_U[:, answer(p)]; ``neurons`` ``[N, 2]``;
    ``op1, op2, result`` ``[P]`` describe the prompts; the ranking runs on ``device``."""
    fixed: HeuristicSet = heuristic_set(op1, op2, result, spec)
    masks = torch.from_numpy(fixed.masks).to(device)
    groups = torch.from_numpy(fixed.groups)
    kinds = np.array(fixed.kinds)
    values = {"operand": activations.T.double().to(device),
              "result": (activations * direct_logits).T.double().to(device)}
    signs = (1, -1) if two_sided else (1,)
    orders = {(kind, sign): ranking(sign * v) for kind, v in values.items() for sign in signs}
    scores = torch.full((len(neurons), len(fixed)), -1.0)
    for kind, v in values.items():
        cols = torch.from_numpy(np.flatnonzero(kinds == kind))
        for sign in signs if len(cols) else ():
            found = match_scores(sign * v, masks[cols], orders[kind, sign], groups[cols])
            scores[:, cols] = torch.maximum(scores[:, cols], found)
    distinct, result_index = np.unique(result, return_inverse=True)
    result_index = torch.from_numpy(result_index).to(device)
    max_count = int(spec.max_coverage * len(result))
    limits = (max_count, spec.min_prompts)
    set_scores, chosen = value_set_scores(values["result"], result_index, spec.value_set_sizes, *limits,
                                          order=orders["result", 1])
    low_better, low_chosen = torch.zeros_like(set_scores, dtype=torch.bool), chosen
    if two_sided:
        low_scores, low_chosen = value_set_scores(-values["result"], result_index, spec.value_set_sizes, *limits,
                                                  order=orders["result", -1])
        low_better = torch.nan_to_num(low_scores, -1.0) > torch.nan_to_num(set_scores, -1.0)
        set_scores = torch.where(low_better, low_scores, set_scores)
    all_scores = torch.cat([scores, set_scores.cpu()], 1).numpy()  # [N, H + n_sizes]
    all_scores[constant_rows(activations.T).numpy()] = np.nan
    ranked = np.nan_to_num(all_scores, nan=-np.inf)
    best_rank = (-ranked).argsort(1, kind="stable").argsort(1, kind="stable")
    keep = ((ranked >= threshold) | (best_rank < keep_best)) & np.isfinite(ranked)
    n_idx, h_idx = np.nonzero(keep)
    masks_by_name = dict(zip(fixed.names, fixed.masks))
    names, families = list(fixed.names), list(fixed.families)
    heuristic, family, coverage = [], [], []
    for n, h in zip(n_idx.tolist(), h_idx.tolist()):  # only the kept entries: the value sets need their members
        if h < len(fixed):
            name, families_h = names[h], families[h]
        else:
            i = h - len(fixed)
            favourites = (low_chosen if bool(low_better[n, i]) else chosen)[n, : spec.value_set_sizes[i]]
            members = sorted(distinct[favourites.cpu().numpy()].tolist())
            name, families_h = "result_set_{" + ",".join(str(v) for v in members) + "}", "result_set"
            masks_by_name.setdefault(name, np.isin(result, members))
        heuristic.append(name)
        family.append(families_h)
        coverage.append(float(masks_by_name[name].mean()))
    table = pd.DataFrame(dict(layer=neurons[n_idx, 0].numpy(), neuron=neurons[n_idx, 1].numpy(), heuristic=heuristic,
                              family=family, score=all_scores[n_idx, h_idx], coverage=coverage,
                              matched=all_scores[n_idx, h_idx] >= threshold))
    table["kind"] = np.where(table["family"].str.startswith("result"), "result", "operand")
    table = table.sort_values(["layer", "neuron", "score"], ascending=[True, True, False], ignore_index=True)
    used = set(heuristic)
    return Classification(table, {name: mask for name, mask in masks_by_name.items() if name in used})
