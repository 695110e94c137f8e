"""Greedy selection: the heap-based :meth:`Graph.select_greedy` picks exactly the edges of the plain loop it
replaced (``baseline_greedy`` in ``benchmarks/greedy_selection.py``: one argmax over every candidate edge per step),
ties, NaN and infinities included."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.greedy_selection import baseline_greedy
from circuitflow.circuits.graph import Graph

SHAPES = [(2, 4, 2, True), (3, 4, 4, False), (2, 6, 2, False), (1, 2, 1, True), (4, 8, 2, False)]


def random_graph(shape: tuple[int, int, int, bool], kind: str, seed: int) -> Graph:
    """A graph of ``shape`` with random scores: ``normal``; ``ties`` (small integers, zeros of both signs); or
    ``special`` (ties plus a few NaN, +inf and -inf)."""
    generator = torch.Generator().manual_seed(seed)
    graph = Graph.empty(*shape)
    size = (graph.n_up, graph.n_down)
    if kind == "normal":
        scores = torch.randn(size, generator=generator)
    else:
        scores = torch.randint(-2, 3, size, generator=generator).float()
        scores[torch.rand(size, generator=generator) < 0.2] = -0.0
    if kind == "special":
        for value in (math.nan, math.inf, -math.inf):
            scores[torch.rand(size, generator=generator) < 0.03] = value
    graph.scores = scores * graph.valid
    return graph


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["normal", "ties", "special"])
@pytest.mark.parametrize("absolute", [True, False])
def test_greedy_equals_the_plain_loop(shape, kind, absolute):
    graph = random_graph(shape, kind, seed=sum(shape[:3]) + len(kind))
    for n in (0, 1, 7, graph.n_valid_edges // 3, graph.n_valid_edges + 5):
        expected = baseline_greedy(graph, n, absolute)
        graph.select_greedy(n, absolute)
        assert torch.equal(graph.in_graph, expected), (shape, kind, absolute, n)
        assert graph.level == "edge"
        assert graph.meta["selection"] == dict(method="greedy", n=int(expected.sum()), absolute=absolute, level="edge")


def test_greedy_chooses_n_edges_grown_from_the_logits():
    graph = random_graph((3, 4, 2, False), "normal", seed=1)
    owner = graph.down_owner()
    previous = torch.zeros_like(graph.valid)
    for n in range(1, 41):
        graph.select_greedy(n)
        assert graph.n_edges == n and not (graph.in_graph & ~graph.valid).any()
        assert not (previous & ~graph.in_graph).any()  # greedy(n - 1) is a prefix of greedy(n)
        up, down = (graph.in_graph & ~previous).nonzero()[0].tolist()
        writers = torch.cat([previous.any(1), torch.ones(1, dtype=torch.bool)])  # earlier edges' writers, logits
        assert bool((owner[down] & writers).any()), f"edge {up} -> {down} reads through a node outside the circuit"
        previous = graph.in_graph.clone()
    first = graph.select_greedy(1).in_graph.nonzero()[0].tolist()
    assert first == [int(graph.scores[:, graph.logits_down].abs().argmax()), graph.logits_down]


def test_greedy_takes_every_valid_edge_and_no_minus_infinity():
    graph = random_graph((2, 4, 2, True), "normal", seed=2)
    graph.set_neurons(torch.ones(graph.n_up, 3, dtype=torch.bool))  # a neuron-level circuit before: greedy replaces it
    graph.select_greedy(10**9)
    assert torch.equal(graph.in_graph, graph.valid) and graph.meta["selection"]["n"] == graph.n_valid_edges
    assert graph.level == "edge" and graph.neuron_in_graph is None
    graph.scores[1:, graph.logits_down] = -math.inf  # only input -> logits is a candidate at first, with score 0
    graph.scores[0, graph.logits_down] = 0.0
    graph.select_greedy(10**9, absolute=False)
    # input is already in the circuit, so every reader of a head or MLP stays out of reach
    expected = torch.zeros_like(graph.valid)
    expected[0, graph.logits_down] = True
    assert torch.equal(graph.in_graph, expected)
