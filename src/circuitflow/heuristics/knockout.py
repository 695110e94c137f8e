"""Knockouts (Nikankin et al. 2025, §5): do the neurons of a heuristic matter for the prompts it applies to?

Neurons are zero-ablated (``mlp.hook_post`` set to 0 at every position, as the paper does) and the model's accuracy
(argmax at the last position = the answer) is measured on prompts it answered correctly, so the baseline is 1.

* Heuristic knockout: ablate the neurons matched to one heuristic; measure the accuracy on prompts associated with
  it, on as many unassociated prompts, and on the associated prompts when as many random classified neurons (same
  count per layer, none of the heuristic's) are ablated instead.
* Prompt knockout: for each prompt, rank the classified neurons of each layer by how many of the prompt's
  heuristics they implement and ablate the top j per layer (only neurons matching at least one); the control
  ablates as many random classified neurons of the same layers.

Every prompt can have its own ablation: ablations are ``[rows, layers, d_mlp]`` masks applied row by row, so a
batch of prompts with different knockouts is one forward pass.
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
def ablated_correct(tracer: Tracer, tokens: Tensor, answer_tokens: Tensor, ablate: Tensor,
                    batch_size: int = 512) -> Tensor:
    """``[R]`` bool: whether the model still answers prompt r (``tokens`` ``[R, pos]``, one token length) with
    ``answer_tokens[r]`` when the neurons ``ablate[r]`` (``[R, n_layers, d_mlp]`` bool) are zeroed at every
    position."""
    out = []
    for start in range(0, len(tokens), batch_size):
        part = slice(start, start + batch_size)
        keep = (~ablate[part]).to(tracer.device)

        def zero(layer, tensor, hook):  # [b, pos, d_mlp]
            return tensor * keep[:, layer, None, :].to(tensor.dtype)

        hooks = [(la.hooks["mlp_post"], partial(zero, layer)) for layer, la in enumerate(tracer.anatomy.layers)]
        with tracer.bridge.hooks(fwd_hooks=hooks):
            logits = tracer.bridge(tokens[part].to(tracer.device))
        out.append((logits[:, -1].argmax(-1).cpu() == answer_tokens[part]))
    return torch.cat(out)


def _random_like(ablate: Tensor, pool: Tensor, gen: torch.Generator) -> Tensor:
    """For each row and layer, as many neurons drawn at random from ``pool`` ``[L, d_mlp]`` (bool) minus that row's
    ablated ones as ``ablate`` ``[R, L, d_mlp]`` has there (fewer when the pool runs out)."""
    available = pool[None] & ~ablate
    noise = torch.rand(ablate.shape, generator=gen).masked_fill(~available, 2.0)
    order = noise.argsort(-1).argsort(-1)
    return (order < ablate.sum(-1, keepdim=True)) & available


def _neuron_mask(shape: tuple[int, int], layers: np.ndarray, neurons: np.ndarray) -> Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[torch.tensor(layers, dtype=torch.long), torch.tensor(neurons, dtype=torch.long)] = True
    return mask


def heuristic_knockout(tracer: Tracer, tokens: Tensor, answer_tokens: Tensor, masks: dict[str, np.ndarray],
                       matches: pd.DataFrame, classified: pd.DataFrame, min_neurons: int, max_prompts: int,
                       seed: int) -> pd.DataFrame:
    """Per heuristic with at least ``min_neurons`` matched neurons: ``accuracy_associated``,
    ``accuracy_unassociated`` and ``accuracy_random`` (see the module docstring) over at most ``max_prompts``
    associated prompts (and as many unassociated ones), drawn with ``seed`` from ``tokens`` ``[P, pos]`` — prompts
    the model answers correctly, in the order of the ``masks`` (name -> ``[P]``). ``matches``: rows ``layer, neuron,
    heuristic``; ``classified``: the candidate neurons (``layer, neuron``), the pool of the random control."""
    a = tracer.anatomy
    shape = (a.n_layers, a.d_mlp)
    pool = _neuron_mask(shape, classified["layer"].to_numpy(), classified["neuron"].to_numpy())
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    rows = []
    for name, group in matches.groupby("heuristic", sort=True):  # one batched forward per heuristic
        assoc, other = np.flatnonzero(masks[name]), np.flatnonzero(~masks[name])
        n = min(max_prompts, len(assoc), len(other))
        if len(group) < min_neurons or n == 0:
            continue
        chosen = torch.from_numpy(np.concatenate([rng.choice(assoc, n, replace=False),
                                                  rng.choice(other, n, replace=False)]))
        ablate = _neuron_mask(shape, group["layer"].to_numpy(), group["neuron"].to_numpy())[None].expand(n, *shape)
        control = _random_like(ablate, pool, gen)
        prompt_rows = torch.cat([chosen, chosen[:n]])  # associated, unassociated, associated with the control
        correct = ablated_correct(tracer, tokens[prompt_rows], answer_tokens[prompt_rows],
                                  torch.cat([ablate, ablate, control])).double().view(3, n).mean(1)
        rows.append(dict(heuristic=name, family=group["family"].iloc[0], n_neurons=len(group), n_prompts=n,
                         accuracy_associated=float(correct[0]), accuracy_unassociated=float(correct[1]),
                         accuracy_random=float(correct[2])))
    columns = ["heuristic", "family", "n_neurons", "n_prompts", "accuracy_associated", "accuracy_unassociated",
               "accuracy_random"]
    return pd.DataFrame(rows, columns=columns)


def prompt_knockout(tracer: Tracer, tokens: Tensor, answer_tokens: Tensor, masks: dict[str, np.ndarray],
                    matches: pd.DataFrame, classified: pd.DataFrame, per_layer: Sequence[int],
                    seed: int) -> pd.DataFrame:
    """Per j in ``per_layer``: ``accuracy`` when each prompt loses its top-j neurons per layer by number of matched
    associated heuristics, ``accuracy_random`` for the random control, and ``neurons_ablated`` (mean per prompt).
    Arguments as for :func:`heuristic_knockout` (every prompt of ``tokens`` is used)."""
    a = tracer.anatomy
    names = sorted(set(matches["heuristic"]))
    assoc = torch.from_numpy(np.stack([masks[name] for name in names], axis=1)).float()  # [P, H]
    heuristic_index = {name: h for h, name in enumerate(names)}
    implements = torch.zeros(len(names), a.n_layers * a.d_mlp)  # [H, L * d_mlp]
    flat = torch.from_numpy(matches["layer"].to_numpy() * a.d_mlp + matches["neuron"].to_numpy())
    implements[torch.tensor([heuristic_index[h] for h in matches["heuristic"]]), flat] = 1.0
    counts = (assoc @ implements).view(-1, a.n_layers, a.d_mlp)  # [P, L, d_mlp]: the prompt's heuristics per neuron
    pool = _neuron_mask((a.n_layers, a.d_mlp), classified["layer"].to_numpy(), classified["neuron"].to_numpy())
    gen = torch.Generator().manual_seed(seed)
    order = (counts + torch.rand(counts.shape, generator=gen) * 0.5).argsort(-1, descending=True).argsort(-1)
    rows = []
    for j in per_layer:
        ablate = (order < j) & (counts > 0)
        control = _random_like(ablate, pool, gen)
        correct = ablated_correct(tracer, tokens.repeat(2, 1), answer_tokens.repeat(2),
                                  torch.cat([ablate, control])).double()
        rows.append(dict(neurons_per_layer=int(j), accuracy=float(correct[: len(tokens)].mean()),
                         accuracy_random=float(correct[len(tokens):].mean()),
                         neurons_ablated=float(ablate.sum((1, 2)).double().mean()), n_prompts=len(tokens)))
    return pd.DataFrame(rows)
