"""How well approximate edge scores agree with exact edge patching (Pearson and Spearman over valid edges)."""

from __future__ import annotations

import torch

from circuitflow.circuits.graph import Graph


def _ranks(values: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty_like(values)
    ranks[values.argsort()] = torch.arange(len(values), dtype=values.dtype)
    return ranks


def agreement(approx: Graph, exact: Graph) -> dict[str, float]:
    """Pearson and Spearman correlation of ``approx``'s edge scores with ``exact``'s, over the valid edges."""
    valid = exact.valid
    x, y = approx.scores[valid].double(), exact.scores[valid].double()
    pearson = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    spearman = float(torch.corrcoef(torch.stack([_ranks(x), _ranks(y)]))[0, 1])
    return dict(pearson=pearson, spearman=spearman, n_edges=int(valid.sum()))
