"""How well approximate edge scores agree with exact edge patching (Pearson and Spearman over valid edges)."""

from __future__ import annotations

import torch

from circuitflow.circuits.graph import Graph


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """``[n]``: the rank of each of ``values`` ``[n]`` (0-based), tied values sharing the mean of their ranks (as
    Spearman's correlation requires: the toy graph's structurally zero edges are all tied at 0)."""
    _, group, counts = torch.unique(values, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # rank of each distinct value's first occurrence
    return (first + (counts - 1) / 2).to(values.dtype)[group]


def agreement(approx: Graph, exact: Graph) -> dict[str, float]:
    """Pearson and Spearman correlation of ``approx``'s edge scores with ``exact``'s, over the valid edges."""
    valid = exact.valid
    x, y = approx.scores[valid].double(), exact.scores[valid].double()
    pearson = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    spearman = float(torch.corrcoef(torch.stack([average_ranks(x), average_ranks(y)]))[0, 1])
    return dict(pearson=pearson, spearman=spearman, n_edges=int(valid.sum()))
