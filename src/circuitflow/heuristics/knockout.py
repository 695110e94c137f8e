"""Knockouts (Nikankin et al. 2025, §5): do the neurons of a heuristic matter for the prompts it applies to?

Neurons are zero-ablated (``mlp.hook_post`` set to 0 at every position, as the paper does) and the model's accuracy
(argmax at the last position = the answer) is measured on prompts it answered correctly, so the baseline is 1.

* Heuristic knockout: ablate the neurons matched to one heuristic; measure the accuracy on prompts associated with
  it, on as many unassociated prompts, and on the associated prompts when as many random classified neurons (same
  count per layer, none of the heuristic's) are ablated instead.
* Prompt knockout: for each prompt, rank the classified neurons of each layer by how many of the prompt's
  heuristics they implement (ties in a seeded random order) and ablate the top j per layer (only neurons matching
  at least one); the control ablates as many random classified neurons of the same layers.

Ablations live in the space of the N classified neurons (``neurons`` ``[N, 2]``: layer, index): a ``[rows, N]``
mask, applied row by row, so a batch of prompts with different knockouts is one forward pass and nothing of size
``[rows, n_layers, d_mlp]`` is ever formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.circuits.tracing import Tracer


@torch.no_grad()
def ablated_correct(tracer: Tracer, tokens: Tensor, answer_tokens: Tensor, ablate: Tensor, neurons: Tensor, *,
                    batch_size: int = 512) -> Tensor:
    """``[R]`` bool: whether the model still answers prompt r (``tokens`` ``[R, pos]``, one token length) with
    ``answer_tokens[r]`` when the neurons ``neurons[ablate[r]]`` (``ablate`` ``[R, N]`` bool) are zeroed at every
    position."""
    layers = sorted(set(neurons[:, 0].tolist()))
    columns = {layer: (neurons[:, 0] == layer).nonzero().squeeze(1) for layer in layers}
    out = []
    for start in range(0, len(tokens), batch_size):
        part = ablate[start : start + batch_size]

        def zero(layer, tensor, hook):  # [b, pos, d_mlp]
            keep = torch.ones(part.shape[0], tensor.shape[-1], dtype=torch.bool)
            keep[:, neurons[columns[layer], 1]] = ~part[:, columns[layer]]
            return tensor * keep[:, None, :].to(tensor.device, tensor.dtype)

        hooks = [(tracer.anatomy.layers[layer].hooks["mlp_post"], partial(zero, layer)) for layer in layers]
        with tracer.bridge.hooks(fwd_hooks=hooks):
            logits = tracer.bridge(tokens[start : start + batch_size].to(tracer.device))
        out.append((logits[:, -1].argmax(-1).cpu() == answer_tokens[start : start + batch_size]))
    return torch.cat(out)


def per_layer_top(scores: Tensor, layer_of: Tensor, counts: Tensor) -> Tensor:
    """``[R, N]`` bool: in each row r and layer l, the ``counts[r, l]`` columns of layer l (``layer_of`` ``[N]``) with
    the highest ``scores`` ``[R, N]``."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    for layer in layer_of.unique().tolist():
        cols = (layer_of == layer).nonzero().squeeze(1)
        rank = scores[:, cols].argsort(dim=1, descending=True, stable=True).argsort(dim=1)
        out[:, cols] = rank < counts[:, layer, None]
    return out


def _layer_counts(mask: Tensor, layer_of: Tensor, n_layers: int) -> Tensor:
    """``[R, n_layers]``: how many columns of each layer ``mask`` ``[R, N]`` selects."""
    return torch.zeros(mask.shape[0], n_layers, dtype=torch.long).index_add_(1, layer_of, mask.long())


def random_control(selected: Tensor, layer_of: Tensor, gen: torch.Generator) -> Tensor:
    """``[R, N]``: per row and layer, as many columns drawn at random among the unselected ones of that layer as
    ``selected`` ``[R, N]`` has there (fewer when the layer runs out)."""
    n_layers = int(layer_of.max()) + 1
    wanted = _layer_counts(selected, layer_of, n_layers)
    free = _layer_counts(~selected, layer_of, n_layers)
    noise = torch.rand(selected.shape, generator=gen).masked_fill(selected, -1.0)
    return per_layer_top(noise, layer_of, torch.minimum(wanted, free))


def _columns(classified: pd.DataFrame, matched: pd.DataFrame) -> Tensor:
    """``[N]`` bool: which classified neurons (rows of ``classified``) appear in ``matched``."""
    keys = set(zip(matched["layer"], matched["neuron"]))
    return torch.tensor([key in keys for key in zip(classified["layer"], classified["neuron"])], dtype=torch.bool)


def heuristic_knockout(tracer: Tracer, tokens: Tensor, answer_tokens: Tensor, masks: dict[str, np.ndarray], *,
                       matches: pd.DataFrame, classified: pd.DataFrame, min_neurons: int, max_prompts: int,
                       seed: int) -> pd.DataFrame:
    """Per heuristic with at least ``min_neurons`` matched neurons: ``accuracy_associated``,
    ``accuracy_unassociated`` and ``accuracy_random`` (see the module docstring) over at most ``max_prompts``
    associated prompts (and as many unassociated ones), drawn with ``seed`` from ``tokens`` ``[P, pos]`` — prompts
    the model answers correctly, in the order of the ``masks`` (name -> ``[P]``). ``matches``: rows ``layer, neuron,
    heuristic, family``; ``classified``: the N candidate neurons (``layer, neuron``), the pool of the control."""
    neurons = torch.tensor(classified[["layer", "neuron"]].to_numpy(dtype=np.int64))
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    rows = []
    for name, group in matches.groupby("heuristic", sort=True):  # one batched forward per heuristic
        assoc, other = np.flatnonzero(masks[name]), np.flatnonzero(~masks[name])
        n = min(max_prompts, len(assoc), len(other))
        if len(group) < min_neurons or n == 0:
            continue
        chosen = torch.from_numpy(np.concatenate([rng.choice(assoc, n, replace=False),
                                                  rng.choice(other, n, replace=False)]))
        ablate = _columns(classified, group)[None].expand(n, -1)
        control = random_control(ablate, neurons[:, 0], gen)
        prompt_rows = torch.cat([chosen, chosen[:n]])  # associated, unassociated, associated with the control
        correct = ablated_correct(tracer, tokens[prompt_rows], answer_tokens[prompt_rows],
                                  torch.cat([ablate, ablate, control]), neurons).double().view(3, n).mean(1)
        rows.append(dict(heuristic=name, family=group["family"].iloc[0], n_neurons=len(group), n_prompts=n,
                         accuracy_associated=float(correct[0]), accuracy_unassociated=float(correct[1]),
                         accuracy_random=float(correct[2])))
    columns = ["heuristic", "family", "n_neurons", "n_prompts", "accuracy_associated", "accuracy_unassociated",
               "accuracy_random"]
    return pd.DataFrame(rows, columns=columns)


def prompt_knockout(tracer: Tracer, tokens: Tensor, answer_tokens: Tensor, masks: dict[str, np.ndarray], *,
                    matches: pd.DataFrame, classified: pd.DataFrame, per_layer: Sequence[int],
                    seed: int) -> pd.DataFrame:
    """Per j in ``per_layer``: ``accuracy`` when each prompt loses its top-j neurons per layer by number of matched
    associated heuristics, ``accuracy_random`` for the random control, and ``neurons_ablated`` (mean per prompt).
    Arguments as for :func:`heuristic_knockout` (every prompt of ``tokens`` is used)."""
    neurons = torch.tensor(classified[["layer", "neuron"]].to_numpy(dtype=np.int64))
    names = sorted(set(matches["heuristic"]))
    assoc = torch.from_numpy(np.stack([masks[name] for name in names], axis=1)).float()  # [P, H]
    column = {key: i for i, key in enumerate(zip(classified["layer"], classified["neuron"]))}
    implements = torch.zeros(len(names), len(neurons))  # [H, N]
    heuristic_index = {name: h for h, name in enumerate(names)}
    implements[torch.tensor([heuristic_index[h] for h in matches["heuristic"]], dtype=torch.long),
               torch.tensor([column[key] for key in zip(matches["layer"], matches["neuron"])], dtype=torch.long)] = 1
    counts = assoc @ implements  # [P, N]: how many of the prompt's heuristics each neuron implements
    gen = torch.Generator().manual_seed(seed)
    tie_break = counts + 0.5 * torch.rand(counts.shape, generator=gen)
    n_layers = int(neurons[:, 0].max()) + 1
    rows = []
    for j in per_layer:
        ablate = per_layer_top(tie_break, neurons[:, 0], torch.full((len(tokens), n_layers), int(j))) & (counts > 0)
        control = random_control(ablate, neurons[:, 0], gen)
        correct = ablated_correct(tracer, tokens.repeat(2, 1), answer_tokens.repeat(2), torch.cat([ablate, control]),
                                  neurons).double()
        rows.append(dict(neurons_per_layer=int(j), accuracy=float(correct[: len(tokens)].mean()),
                         accuracy_random=float(correct[len(tokens):].mean()),
                         neurons_ablated=float(ablate.sum(1).double().mean()), n_prompts=len(tokens)))
    return pd.DataFrame(rows)
