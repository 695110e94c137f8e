"""Agreement of edge scores: Spearman's correlation averages the ranks of tied scores (the toy graph's structurally
zero edges), checked against a naive computation."""

from __future__ import annotations

import math

import pytest
import torch

from circuitflow.circuits import Graph, agreement
from circuitflow.circuits.agreement import average_ranks


def naive_average_ranks(values: list[float]) -> list[float]:
    """0-based ranks, a tie sharing the mean of the ranks it spans: #smaller + (#equal − 1) / 2."""
    return [sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values]


def naive_pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_average_ranks_share_the_mean_rank_of_a_tie():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 0.0, 3.0])).tolist() == [3.0, 1.0, 3.0, 0.0, 3.0]
    assert average_ranks(torch.tensor([2.0, -1.0, 2.0, 5.0])).tolist() == [1.5, 0.0, 1.5, 3.0]


def test_spearman_averages_tied_ranks_like_the_naive_formula():
    """The toy graph's shape (2 layers, 4 heads, parallel: 102 edges) with 12 edges zero in both graphs, as the
    structurally zero edges are for every method, and a few more ties among the approximate scores."""
    gen = torch.Generator().manual_seed(0)
    exact, approx = Graph.empty(2, 4, 4, True), Graph.empty(2, 4, 4, True)
    valid = exact.valid
    assert int(valid.sum()) == 102
    truth = torch.randn(102, generator=gen).double()
    estimate = (truth + 0.8 * torch.randn(102, generator=gen).double()).round(decimals=1)  # rounding adds ties
    zero = torch.randperm(102, generator=gen)[:12]
    truth[zero], estimate[zero] = 0.0, 0.0
    exact.scores[valid], approx.scores[valid] = truth.float(), estimate.float()
    found = agreement(approx, exact)
    x, y = approx.scores[valid].double().tolist(), exact.scores[valid].double().tolist()
    expected = naive_pearson(naive_average_ranks(x), naive_average_ranks(y))
    assert found["spearman"] == pytest.approx(expected, abs=1e-12)
    assert found["pearson"] == pytest.approx(naive_pearson(x, y), abs=1e-12)
    distinct_ranks = [sorted(range(len(v)), key=lambda i: (v[i], i)).index(i) for v in (x, y) for i in range(len(v))]
    tie_broken = naive_pearson(distinct_ranks[:102], distinct_ranks[102:])  # what ranking ties apart gives
    assert abs(tie_broken - expected) > 1e-3
