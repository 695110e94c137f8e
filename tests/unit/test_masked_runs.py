"""The engine's position-resolved and unit-resolved passes against finite differences of the masked run.

``Tracer.gradient_pass`` can keep positions apart (``scores`` ``[n_up, n_down, pos]``) and split each node score over
the node's output dimensions (``unit_scores`` ``[n_up, d_model]``); ``Tracer.run_masked`` can cut an edge at one
position (``missing`` ``[n_masks, n_up, n_down, pos]``) and intervene on output dimensions of nodes (``cut_units``).
Each first-order score must equal the central finite difference of the metric when exactly that (edge, position) or
(node, dimension) receives ±ε of its Δ, computed through the forward edits of the masked run, a different path."""

from __future__ import annotations

import torch

from circuitflow.circuits.tracing import metric_values
from circuitflow.metrics import logit_diff
from tests.unit.test_circuits import random_pairs, tiny  # noqa: F401  (the fixture over TINY_ARCHS)


def tolerances(bridge) -> tuple[float, float, float]:
    """(ε, rtol, atol): HF's GPT-J attention and Llama's RMSNorm compute in float32 inside a float64 model."""
    return (1e-3, 1e-2, 2e-5) if bridge.arch in ("gptj", "llama_gqa") else (1e-5, 1e-5, 1e-7)


def central_difference(tracer, batch, reference, missing_pm, cut_pm=None) -> torch.Tensor:
    """``[n]``: (m(+ε) − m(−ε)) / 2ε of the mean metric, for n masks stacked as [+ε…, −ε…] (ε already applied)."""
    clean, _ = tracer.outputs(batch.clean)
    logits = tracer.run_masked(batch, missing_pm, reference, cut_units=cut_pm)
    values = metric_values(logit_diff, logits, clean, batch).mean(1)
    n = len(values) // 2
    return values[:n] - values[n:]


def gradient_scores(tracer, batch, per_position: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reference, edge scores, unit scores) of one EAP pass, averaged over the batch."""
    g, a = tracer.shape, tracer.anatomy
    clean_logits, clean_up = tracer.outputs(batch.clean)
    reference = tracer.reference(batch, "patching")
    shape = (g.n_up, g.n_down, batch.clean.shape[1]) if per_position else (g.n_up, g.n_down)
    scores = torch.zeros(shape, dtype=torch.float64)
    units = torch.zeros(g.n_up, a.d_model, dtype=torch.float64)
    tracer.gradient_pass(batch, clean_logits, logit_diff, reference - clean_up, scores, unit_scores=units)
    return reference, scores / len(batch), units / len(batch)


def test_per_position_scores_sum_to_the_edge_scores_and_units_to_the_node_scores(tiny):
    _, tracer = tiny
    batch = random_pairs(3)
    _, per_position, units = gradient_scores(tracer, batch, per_position=True)
    _, summed, _ = gradient_scores(tracer, batch, per_position=False)
    torch.testing.assert_close(per_position.sum(2), summed, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(units.sum(1), summed.sum(1), rtol=1e-9, atol=1e-12)


def test_edge_position_scores_equal_finite_differences_of_cutting_one_position(tiny):
    bridge, tracer = tiny
    eps, rtol, atol = tolerances(bridge)
    batch = random_pairs(3)
    reference, scores, _ = gradient_scores(tracer, batch, per_position=True)
    g, pos = tracer.shape, batch.clean.shape[1]
    edges = g.valid.nonzero()
    chosen = edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(0))[:40]]
    cells = torch.cartesian_prod(torch.arange(len(chosen)), torch.arange(pos))  # (edge, position) pairs
    n = len(cells)
    missing = torch.zeros(2 * n, g.n_up, g.n_down, pos, dtype=torch.float64)
    ups, downs, ps = chosen[cells[:, 0], 0], chosen[cells[:, 0], 1], cells[:, 1]
    missing[torch.arange(n), ups, downs, ps] = eps
    missing[torch.arange(n) + n, ups, downs, ps] = -eps
    finite = central_difference(tracer, batch, reference, missing) / (2 * eps)
    assert finite.abs().max() > 1e-3
    torch.testing.assert_close(scores[ups, downs, ps], finite, rtol=rtol, atol=atol)


def test_unit_scores_equal_finite_differences_of_cutting_one_output_dimension(tiny):
    bridge, tracer = tiny
    eps, rtol, atol = tolerances(bridge)
    batch = random_pairs(3)
    reference, _, units = gradient_scores(tracer, batch, per_position=False)
    g, d = tracer.shape, tracer.anatomy.d_model
    cells = torch.cartesian_prod(torch.arange(g.n_up), torch.arange(0, d, max(1, d // 8)))
    n = len(cells)
    cut = torch.zeros(2 * n, g.n_up, d, dtype=torch.float64)
    cut[torch.arange(n), cells[:, 0], cells[:, 1]] = eps
    cut[torch.arange(n) + n, cells[:, 0], cells[:, 1]] = -eps
    missing = torch.zeros(2 * n, g.n_up, g.n_down, dtype=torch.float64)
    finite = central_difference(tracer, batch, reference, missing, cut) / (2 * eps)
    assert finite.abs().max() > 1e-3
    torch.testing.assert_close(units[cells[:, 0], cells[:, 1]], finite, rtol=rtol, atol=atol)


def test_whole_masks_agree_across_the_three_forms(tiny):
    """Cutting an edge set at every position, or cutting every output dimension of the nodes whose edges are all
    cut, gives the same logits as the plain edge mask."""
    _, tracer = tiny
    batch = random_pairs(3)
    g, pos, d = tracer.shape, batch.clean.shape[1], tracer.anatomy.d_model
    reference = tracer.reference(batch, "patching")
    nodes = torch.zeros(g.n_up, dtype=torch.bool)
    nodes[torch.randperm(g.n_up, generator=torch.Generator().manual_seed(1))[: g.n_up // 2]] = True
    edge_mask = g.valid & nodes[:, None]
    plain = tracer.run_masked(batch, edge_mask[None], reference)
    positions = tracer.run_masked(batch, edge_mask[None, :, :, None].expand(1, -1, -1, pos), reference)
    units = tracer.run_masked(batch, torch.zeros_like(edge_mask)[None], reference,
                              cut_units=nodes[None, :, None].expand(1, -1, d).double())
    torch.testing.assert_close(positions, plain, rtol=0, atol=1e-9)
    torch.testing.assert_close(units, plain, rtol=0, atol=1e-9)
