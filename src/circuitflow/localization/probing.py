"""Linear probes for the answer value on the residual stream at each layer and prompt position (paper §3).

Features are the residual stream entering each block (``blocks.{l}.hook_in``; index ``n_layers`` is the stream
entering the final norm), standardized; the probe is a multinomial logistic regression trained with L-BFGS on a
seeded 80/20 split. The first layer whose last-position probe reaches ``threshold`` × the best last-position accuracy
marks where the answer becomes readable: the MLP of the block before it is the model's first "heuristics layer".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.circuits.tracing import Tracer
from circuitflow.localization.patching import POSITION_NAMES


@torch.no_grad()
def residual_streams(tracer: Tracer, tokens: Tensor, batch_size: int = 512) -> Tensor:
    """``[N, n_layers + 1, 4, d_model]``: the residual stream at every layer and the last four positions."""
    names = {**tracer.layer_hooks("resid_in"), "final": tracer.anatomy.final_hook}
    out = []
    for start in range(0, len(tokens), batch_size):
        _, store = tracer.capture(tokens[start : start + batch_size], names)
        out.append(torch.stack([store[key][:, -4:].float().cpu() for key in names], dim=1))
    return torch.cat(out)


def probe_accuracy(features: Tensor, labels: Tensor, seed: int, train_fraction: float = 0.8,
                   l2: float = 1e-5, max_iter: int = 500) -> float:
    """Test accuracy of a standardized multinomial logistic regression (L-BFGS, L2 ``l2``) on a seeded split."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    n_train = int(round(train_fraction * len(labels)))
    train, test = order[:n_train], order[n_train:]
    if len(test) == 0 or len(train) == 0:
        raise ValueError(f"probe: {len(labels)} examples cannot be split {train_fraction:.0%}/rest")
    classes, y = torch.unique(labels, return_inverse=True)
    x = features.float()
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    torch.manual_seed(seed)
    linear = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x[train]), y[train]) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((linear(x[test]).argmax(1) == y[test]).float().mean())


def probe_table(tracer: Tracer, tokens: Tensor, answers: np.ndarray, seed: int) -> pd.DataFrame:
    """Probe accuracy per ``layer`` (0..n_layers) and ``position`` for prompts ``tokens`` [N, p] with answers."""
    streams = residual_streams(tracer, tokens)
    labels = torch.as_tensor(answers)
    rows = []
    for layer in range(streams.shape[1]):
        for p, name in enumerate(POSITION_NAMES):
            rows.append(dict(layer=layer, position=name, accuracy=probe_accuracy(streams[:, layer, p], labels, seed),
                             n_prompts=len(labels), n_classes=int(labels.unique().numel())))
    return pd.DataFrame(rows)


def heuristics_layer(table: pd.DataFrame, threshold: float = 0.8) -> int:
    """The first block whose output makes the answer readable at the last position: (first probe layer with
    accuracy ≥ ``threshold`` × the best) − 1, at least 0."""
    last = table[table["position"] == "last"].sort_values("layer")
    good = last[last["accuracy"] >= threshold * last["accuracy"].max()]
    return max(0, int(good["layer"].iloc[0]) - 1)
