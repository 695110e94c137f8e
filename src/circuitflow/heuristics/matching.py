"""Heuristic matching (Nikankin et al. 2025, §4): which heuristics does each MLP neuron implement?

For neuron n and every prompt p of the operand grid, the neuron's *activation* a_n(p) is its ``mlp.hook_post``
value at the last position, and its *result score* is a_n(p) · (W_out[n] · W_U[:, answer(p)]): how much its value
vector raises the true result's logit (norms ignored). Operand heuristics rank the prompts by the activation, result
heuristics by the result score. For a heuristic h associated with k prompts (:mod:`circuitflow.heuristics.families`),

    score(n, h) = |{the k top-ranked prompts of n} ∩ associated(h)| / k,

and n implements h when score ≥ the threshold (0.6 in the paper). A random ranking scores k/P on average
(``coverage``). With ``two_sided`` the lowest-ranked prompts count too (the higher of the two scores): the SwiGLU
neurons of Llama fire negative as well as positive. A neuron's *value sets*: the m result values with the highest
mean result score on a seeded half of the prompts, as one heuristic "the result is one of these m values" scored on
the other half (chosen and scored on the same prompts, any neuron would match its own favourites).

Chance: the best of a thousand heuristics scores well above ``coverage`` even for a noise neuron. Each neuron's
activations are therefore also shuffled over the prompts (seeded, several times) and scored against the same
heuristics: the ``p_value`` of each match, and the neuron's ``null_best`` (95 % quantile over shuffles of its best
score over all heuristics); a match ``beats_null`` when its score exceeds it.
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
    slot = torch.searchsorted(torch.tensor(layers), neurons[:, 0].contiguous())  # each neuron's captured layer
    out, predicted = torch.empty(len(texts), len(neurons)), torch.empty(len(texts), dtype=torch.long)
    for rows, tokens in indexed_token_batches(tokenizer, list(texts), batch_size):
        logits, store = tracer.capture(tokens, names)
        last = torch.stack([store[str(layer)][:, -1].float().cpu() for layer in layers], dim=1)  # [b, layers, d_mlp]
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
        out[here] = (w_out @ w_u.to(w_out.device, w_out.dtype)).float().cpu()
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


def split_halves(result_index: Tensor, seed: int = 0) -> Tensor:
    """``[P]`` bool: a seeded half of the prompts (``result_index`` ``[P]`` numbers their distinct results), stratified
    by result: each result's prompts alternate between the halves in a random order, starting in a random half. A
    neuron's favourite results are chosen on this half and scored on the other."""
    gen = torch.Generator().manual_seed(seed)
    device = result_index.device
    perm = torch.randperm(len(result_index), generator=gen).to(device)
    shuffled = result_index[perm]
    order = shuffled.argsort(stable=True)
    counts = torch.bincount(shuffled)
    offset = torch.randint(0, 2, (len(counts),), generator=gen).to(device)
    grouped = shuffled[order]
    within = torch.arange(len(result_index), device=device) - (torch.cumsum(counts, 0) - counts)[grouped]
    choose = torch.empty(len(result_index), dtype=torch.bool, device=device)
    choose[perm[order]] = (within + offset[grouped]) % 2 == 0
    return choose


def value_set_scores(values: Tensor, result_index: Tensor, sizes: Sequence[int], *, choose: Tensor, max_count: int,
                     min_count: int = 1, order: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per neuron and set size m: the score of "the result is one of the neuron's m favourite values", the values
    with the highest mean of ``values`` ``[N, P]`` over the prompts ``choose`` ``[P]`` (bool; see
    :func:`split_halves`), scored on the other prompts only (chosen and scored on the same prompts, a noise neuron
    would match its own favourites by construction). ``result_index`` ``[P]`` numbers the distinct results.
    Returns ``(scores [N, len(sizes)], chosen [N, max(sizes)])`` (indices of the favourite values, best first); a
    set covering more than ``max_count`` or fewer than ``min_count`` of all prompts, or none of the scored ones,
    scores NaN."""
    n, n_values = values.shape[0], int(result_index.max()) + 1
    per_value = torch.bincount(result_index, minlength=n_values)
    held_per_value = torch.bincount(result_index[~choose], minlength=n_values)
    seen = torch.bincount(result_index[choose], minlength=n_values)
    sums = values.new_zeros(n, n_values).index_add_(1, result_index[choose], values[:, choose])
    means = torch.where(seen > 0, sums / seen.clamp(min=1), -torch.inf)
    chosen = means.argsort(dim=1, descending=True, stable=True)[:, : max(sizes)]
    order = ranking(values) if order is None else order
    held = order[(~choose)[order]].view(n, -1)  # [N, P_held]: the scored prompts, best first
    top_results = result_index[held[:, :max_count]]  # their results (a set's scored k is at most max_count)
    scores = torch.full((n, len(sizes)), float("nan"), device=values.device)
    for i, m in enumerate(sizes):
        if m >= n_values:
            continue
        total, k = per_value[chosen[:, :m]].sum(1), held_per_value[chosen[:, :m]].sum(1)
        in_set = (top_results[:, :, None] == chosen[:, None, :m]).any(-1)
        hits = (in_set & (torch.arange(top_results.shape[1], device=values.device)[None] < k[:, None])).sum(1)
        scores[:, i] = torch.where((total <= max_count) & (total >= min_count) & (k > 0), hits / k.clamp(min=1),
                                   torch.nan)
    return scores, chosen


@dataclass
class Scorer:
    """Scores activations over one prompt grid against every heuristic: the fixed ones (``fixed``, its masks on the
    scoring device as ``masks``) and each neuron's favourite-result sets (chosen on the prompts ``choose``, scored on
    the rest). Built by :func:`scorer`; :meth:`scores` serves the observed activations and their shuffles alike."""

    fixed: HeuristicSet
    masks: Tensor  # [H, P] bool
    result_index: Tensor  # [P]: the prompt's result among the distinct ones
    choose: Tensor  # [P] bool
    spec: HeuristicSpec
    two_sided: bool

    def scores(self, activations: Tensor, direct_logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(scores [N, H + S], favourites [N, S, max(sizes)])`` for ``activations`` and ``direct_logits`` ``[P, N]``:
        the match score of every fixed heuristic, then of each of the S favourite-result sets (their members'
        result indices in ``favourites``, best first); NaN for a constant neuron (it responds to nothing)."""
        device = self.masks.device
        values = {"operand": activations.T.double().to(device),
                  "result": (activations * direct_logits).T.double().to(device)}
        signs = (1, -1) if self.two_sided else (1,)
        orders = {(kind, sign): ranking(sign * v) for kind, v in values.items() for sign in signs}
        kinds, groups = np.array(self.fixed.kinds), torch.from_numpy(self.fixed.groups)
        fixed = torch.full((activations.shape[1], len(self.fixed)), -1.0)
        for kind, v in values.items():
            cols = torch.from_numpy(np.flatnonzero(kinds == kind))
            for sign in signs if len(cols) else ():
                found = match_scores(sign * v, self.masks[cols], orders[kind, sign], groups[cols])
                fixed[:, cols] = torch.maximum(fixed[:, cols], found)
        sets = [value_set_scores(sign * values["result"], self.result_index, self.spec.value_set_sizes,
                                 choose=self.choose, max_count=int(self.spec.max_coverage * len(self.result_index)),
                                 min_count=self.spec.min_prompts, order=orders["result", sign]) for sign in signs]
        set_scores, favourites = sets[0]
        favourites = favourites[:, None].expand(-1, len(self.spec.value_set_sizes), -1)
        if self.two_sided:  # the lowest result scores, where they match better
            low_better = torch.nan_to_num(sets[1][0], -1.0) > torch.nan_to_num(set_scores, -1.0)
            set_scores = torch.where(low_better, sets[1][0], set_scores)
            favourites = torch.where(low_better[:, :, None], sets[1][1][:, None], favourites)
        out = torch.cat([fixed, set_scores.cpu()], 1)
        out[constant_rows(activations.T)] = torch.nan
        return out, favourites.cpu()


def scorer(op1: np.ndarray, op2: np.ndarray, result: np.ndarray, spec: HeuristicSpec = HeuristicSpec(), *,
           two_sided: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> Scorer:
    """The :class:`Scorer` of the prompts with operands ``op1, op2`` and results ``result`` (each ``[P]``): the
    heuristics of ``spec``, and the favourite-result sets chosen on a seeded half of the prompts
    (:func:`split_halves`)."""
    fixed = heuristic_set(op1, op2, result, spec)
    result_index = torch.from_numpy(np.unique(result, return_inverse=True)[1]).to(device)
    return Scorer(fixed, torch.from_numpy(fixed.masks).to(device), result_index, split_halves(result_index, seed),
                  spec, two_sided)


def permutation_null(score: Scorer, activations: Tensor, direct_logits: Tensor, observed: Tensor, *,
                     n_permutations: int, seed: int = 0, quantile: float = 0.95) -> tuple[Tensor, Tensor]:
    """What the scores reach by chance: each neuron's activations shuffled over the prompts (its own seeded
    permutation; the direct logits stay with their prompt's result), scored ``n_permutations`` times against the
    same heuristics (favourite sets re-chosen on each shuffle). Returns ``(p_value [N, H + S], null_best [N])``:
    per neuron and heuristic (1 + #shuffles scoring at least ``observed``) / (1 + n_permutations), and per neuron
    the ``quantile`` over shuffles of its best score over all heuristics — a score above it beats chance even after
    choosing the best of all heuristics. NaN where ``observed`` is NaN, and everywhere without permutations."""
    gen = torch.Generator().manual_seed(seed)
    at_least = torch.zeros_like(observed)
    best = torch.empty(n_permutations, observed.shape[0])
    for r in range(n_permutations):  # each shuffle scores every neuron at once
        shuffle = torch.rand(activations.shape, generator=gen).argsort(0)
        null, _ = score.scores(activations.gather(0, shuffle), direct_logits)
        at_least += null >= observed
        best[r] = torch.nan_to_num(null, nan=-torch.inf).amax(1)
    if n_permutations == 0:
        return torch.full_like(observed, torch.nan), torch.full((observed.shape[0],), torch.nan)
    p_value = torch.where(observed.isnan(), torch.nan, (1 + at_least) / (1 + n_permutations))
    null_best = best.quantile(quantile, dim=0)
    return p_value, torch.where(torch.isinf(null_best), torch.nan, null_best)


@dataclass
class Classification:
    """The result of :func:`classify`: ``table`` (rows ``layer, neuron, heuristic, family, kind, score, coverage,
    matched, p_value, null_best, beats_null``) and the prompts each named heuristic is associated with, ``masks``
    (name -> bool ``[P]``)."""

    table: pd.DataFrame
    masks: dict[str, np.ndarray]

    def matches(self) -> pd.DataFrame:
        """The matched rows: ``layer, neuron, heuristic, family, score``."""
        return self.table[self.table["matched"]][["layer", "neuron", "heuristic", "family", "score"]]


def classify(activations: Tensor, direct_logits: Tensor, neurons: Tensor, op1: np.ndarray, op2: np.ndarray,
             result: np.ndarray, *, spec: HeuristicSpec = HeuristicSpec(), threshold: float = 0.6,
             two_sided: bool = False, keep_best: int = 3, null_permutations: int = 20, seed: int = 0,
             device: str | torch.device = "cpu") -> Classification:
    """Score every neuron against every heuristic and keep, per neuron, the matched heuristics (score ≥
    ``threshold``) and at least its ``keep_best`` best ones, each with its permutation null
    (:func:`permutation_null`, ``null_permutations`` shuffles; ``beats_null``: the score exceeds the neuron's
    ``null_best``). A neuron whose activation is the same on every prompt (e.g. a first-layer neuron of a
    parallel-attention model at the last position, which sees only the ``=`` token) responds to no heuristic and gets
    no row. ``activations`` ``[P, N]`` from :func:`neuron_activations`; ``direct_logits`` ``[P, N]`` = W_out[n] ·
    W_U[:, answer(p)]; ``neurons`` ``[N, 2]``; ``op1, op2, result`` ``[P]`` describe the prompts; ``seed`` draws the
    half of the prompts that favourite-result sets are chosen on, and the shuffles; the ranking runs on ``device``."""
    score = scorer(op1, op2, result, spec, two_sided=two_sided, seed=seed, device=device)
    observed, favourites = score.scores(activations, direct_logits)
    p_value, null_best = permutation_null(score, activations, direct_logits, observed,
                                          n_permutations=null_permutations, seed=seed)
    all_scores = observed.numpy()  # [N, H + n_sizes]
    ranked = np.nan_to_num(all_scores, nan=-np.inf)
    best_rank = (-ranked).argsort(1, kind="stable").argsort(1, kind="stable")
    keep = ((ranked >= threshold) | (best_rank < keep_best)) & np.isfinite(ranked)
    n_idx, h_idx = np.nonzero(keep)
    fixed, distinct = score.fixed, np.unique(result)
    masks_by_name = dict(zip(fixed.names, fixed.masks))
    heuristic, family, coverage = [], [], []
    for n, h in zip(n_idx.tolist(), h_idx.tolist()):  # only the kept entries: the value sets need their members
        if h < len(fixed):
            name, families_h = fixed.names[h], fixed.families[h]
        else:
            i = h - len(fixed)
            members = sorted(distinct[favourites[n, i, : spec.value_set_sizes[i]].numpy()].tolist())
            name, families_h = "result_set_{" + ",".join(str(v) for v in members) + "}", "result_set"
            masks_by_name.setdefault(name, np.isin(result, members))
        heuristic.append(name)
        family.append(families_h)
        coverage.append(float(masks_by_name[name].mean()))
    scores = all_scores[n_idx, h_idx]
    table = pd.DataFrame(dict(layer=neurons[n_idx, 0].numpy(), neuron=neurons[n_idx, 1].numpy(), heuristic=heuristic,
                              family=family, score=scores, coverage=coverage, matched=scores >= threshold,
                              p_value=p_value.numpy()[n_idx, h_idx], null_best=null_best.numpy()[n_idx]))
    table["beats_null"] = table["score"] > table["null_best"]
    table["kind"] = np.where(table["family"].str.startswith("result"), "result", "operand")
    table = table.sort_values(["layer", "neuron", "score"], ascending=[True, True, False], ignore_index=True)
    used = set(heuristic)
    return Classification(table, {name: mask for name, mask in masks_by_name.items() if name in used})
