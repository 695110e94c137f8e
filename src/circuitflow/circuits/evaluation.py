"""Circuit evaluation and faithfulness (``docs/definitions.md#circuit-evaluation`` ff.).

Evaluating a circuit C: every downstream input x_v receives Σ Δ_u over the upstream nodes u whose edge u → v is
not in C (Δ_u = reference_u − u's output in that same run), so the full graph gives the clean run and the empty
graph the fully intervened run. Faithfulness f(C) = (m(C) − m(∅)) / (m(full) − m(∅)) with m the metric averaged
over examples. Over MIB's circuit sizes (fractions of the edges, of the upstream nodes for node-level circuits, of
the ``n_up * d_model`` output units for neuron-level ones), CPR is the area under f and CMD the area under |1 − f|
(trapezoids over the fraction; CPR higher is better, CMD lower is better). Levels
(``docs/definitions.md#circuit-levels``): a node-level circuit is evaluated through its edge mask
(:meth:`Graph.set_nodes`): the nodes outside it have every outgoing edge intervened; a neuron-level circuit also
intervenes, along the kept edges, on the output dimensions it does not keep (:meth:`Graph.cut_units`); an
mlp-neuron-level circuit intervenes on its input and heads as nodes and sets the MLP hidden neurons it does not keep
to their reference (:meth:`Graph.hidden_cut`), each MLP then delivering exactly their change on all its edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.circuits.data import PairBatch
from circuitflow.circuits.graph import Graph, Level, Selection, check_level
from circuitflow.circuits.tracing import Intervention, Tracer, metric_values
from circuitflow.metrics import Metric

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def evaluate_masks(tracer: Tracer, in_graph: Tensor, batches: Sequence[PairBatch], metric: Metric,
                   intervention: Intervention = "patching", *, means: Tensor | None = None,
                   cut_units: Tensor | None = None, hidden_cut: Tensor | None = None,
                   hidden_means: Tensor | None = None) -> Tensor:
    """``[n_masks, N]`` per-example metric of each circuit mask in ``in_graph`` ``[n_masks, n_up, n_down]`` (or
    ``[n_masks, n_up, n_down, pos]``: edges kept at single positions). ``cut_units`` ``[n_masks, n_up, d_model]``
    bool: output dimensions of nodes intervened on along the kept edges too (neuron-level circuits). ``hidden_cut``
    ``[n_masks, n_layers, d_mlp]`` bool: MLP hidden neurons set to their reference (``hidden_means`` from
    :meth:`Tracer.hidden_means` for the mean interventions); the MLPs' edges are then kept, whatever ``in_graph``
    says, so each MLP delivers exactly the change of those neurons (mlp-neuron-level circuits)."""
    valid = tracer.shape.valid.to(in_graph.device)
    missing = (valid[..., None] if in_graph.dim() == 4 else valid).unsqueeze(0) & ~in_graph.bool()
    if hidden_cut is not None:
        a = tracer.anatomy
        if tuple(hidden_cut.shape[1:]) != (a.n_layers, a.d_mlp):
            raise ValueError(f"hidden_cut has shape {tuple(hidden_cut.shape)}; the model needs [n_masks, {a.n_layers}, "
                             f"{a.d_mlp}] (layers x d_mlp hidden neurons)")
        missing[:, tracer.shape.is_mlp().to(missing.device)] = False
    rows = []
    for batch in batches:
        batch = batch.to(tracer.device)
        clean_logits, _ = tracer.capture(batch.clean, {})
        reference = tracer.reference(batch, intervention, means)
        hidden_reference = None if hidden_cut is None else tracer.hidden_reference(batch, intervention, hidden_means)
        chunk = max(1, tracer.rows_per_pass(batch.clean.shape[1]) // len(batch))
        values = [metric_values(metric, tracer.run_masked(
            batch, missing[i : i + chunk], reference,
            cut_units=None if cut_units is None else cut_units[i : i + chunk],
            hidden_cut=None if hidden_cut is None else hidden_cut[i : i + chunk], hidden_reference=hidden_reference),
            clean_logits, batch).double() for i in range(0, len(missing), chunk)]
        rows.append(torch.cat(values))
    return torch.cat(rows, dim=1).cpu()


def evaluate_graph(bridge, graph: Graph, batches: Sequence[PairBatch], metric: Metric,
                   intervention: Intervention = "patching", *, means: Tensor | None = None,
                   hidden_means: Tensor | None = None, tracer: Tracer | None = None) -> Tensor:
    """``[N]``: the per-example metric with ``graph.in_graph`` as the circuit (at node level, the valid outgoing
    edges of ``graph.node_in_graph``; at neuron level, those of the nodes with a kept unit, the others intervened;
    at mlp-neuron level, those of the kept input and heads, the MLPs' other hidden neurons set to their reference)."""
    tracer = tracer or Tracer(bridge)
    cut, hidden_cut = graph.cut_units(), graph.hidden_cut()
    return evaluate_masks(tracer, graph.circuit_edges().unsqueeze(0), batches, metric, intervention, means=means,
                          cut_units=None if cut is None else cut.unsqueeze(0), hidden_means=hidden_means,
                          hidden_cut=None if hidden_cut is None else hidden_cut.unsqueeze(0))[0]


def faithfulness_of_masks(tracer: Tracer, masks: Tensor, batches: Sequence[PairBatch], metric: Metric,
                          intervention: Intervention = "patching", *, means: Tensor | None = None,
                          cut_units: Tensor | None = None, hidden_cut: Tensor | None = None,
                          hidden_means: Tensor | None = None) -> tuple[Tensor, float, float]:
    """(metric ``[n_masks]`` averaged over examples, m(full), m(∅)) of circuit masks ``[n_masks, n_up, n_down(, pos)]``
    (``cut_units``, ``hidden_cut`` as in :func:`evaluate_masks`; with ``hidden_cut`` the empty circuit cuts every
    hidden neuron), the full and empty circuits evaluated in the same pass; refuses a metric that does not move
    between them (faithfulness undefined)."""
    full = tracer.shape.valid.to(masks.device)
    full = full[..., None].expand(masks.shape[1:]) if masks.dim() == 4 else full
    stacked = torch.cat([full[None], torch.zeros_like(full)[None], masks.bool()])
    if cut_units is not None:
        cut_units = torch.cat([torch.zeros_like(cut_units[:2]), cut_units])
    if hidden_cut is not None:
        hidden_cut = torch.cat([torch.zeros_like(hidden_cut[:1]), torch.ones_like(hidden_cut[:1]), hidden_cut])
    values = evaluate_masks(tracer, stacked, batches, metric, intervention, means=means, cut_units=cut_units,
                            hidden_cut=hidden_cut, hidden_means=hidden_means).mean(1).double()
    m_full, m_empty = float(values[0]), float(values[1])
    gap = m_full - m_empty
    if not math.isfinite(gap) or abs(gap) < 1e-12:
        raise FloatingPointError(f"the metric does not change between the full model ({m_full:.4g}) and the empty "
                                 f"circuit ({m_empty:.4g}): faithfulness is undefined; use other prompts or a metric")
    return values[2:], m_full, m_empty


def faithfulness_curve(bridge, graph: Graph, batches: Sequence[PairBatch], metric: Metric,
                       intervention: Intervention = "patching", *, fractions: Sequence[float] = MIB_FRACTIONS,
                       selection: Selection = "topn", absolute: bool = True, level: Level = "edge",
                       means: Tensor | None = None, hidden_means: Tensor | None = None,
                       tracer: Tracer | None = None) -> pd.DataFrame:
    """Faithfulness of the circuits of ``graph`` at each fraction of its edges (``level="node"``: of its upstream
    nodes; ``level="neuron"``: of its ``n_up * d_model`` output units; ``level="mlp-neuron"``: of its input, heads
    and MLP hidden neurons), all sizes evaluated in one batched pass.

    Columns: ``fraction, n_edges, n_nodes, n_neurons, metric, metric_full, metric_empty, faithfulness, selection,
    absolute, level``; ``n_neurons`` counts the output units the circuit keeps (at mlp-neuron level its MLP hidden
    neurons; at edge and node level, d_model for each writer with an outgoing circuit edge:
    :meth:`Graph.count_neurons`). The graph's circuit and metadata are left as they were.
    """
    check_level(level)
    tracer = tracer or Tracer(bridge)
    fields = ("in_graph", "node_in_graph", "neuron_in_graph", "hidden_in_graph", "meta")
    kept = {name: getattr(graph, name) for name in fields} | dict(in_graph=graph.in_graph.clone(),
                                                                  meta=dict(graph.meta))
    total = graph.n_units(level)
    masks, cuts, hidden_cuts, sizes = [], [], [], []
    for fraction in fractions:
        graph.select(selection, max(1, math.ceil(fraction * total)), absolute, level=level)
        masks.append(graph.in_graph.clone())
        cuts.append(graph.cut_units())
        hidden_cuts.append(graph.hidden_cut())
        sizes.append((graph.n_edges, graph.n_nodes, graph.count_neurons(tracer.anatomy.d_model)))
    for name, value in kept.items():
        setattr(graph, name, value)
    values, full, empty = faithfulness_of_masks(
        tracer, torch.stack(masks), batches, metric, intervention, means=means, hidden_means=hidden_means,
        cut_units=torch.stack(cuts) if level == "neuron" else None,
        hidden_cut=torch.stack(hidden_cuts) if level == "mlp-neuron" else None)
    return pd.DataFrame(dict(
        fraction=list(fractions), n_edges=[s[0] for s in sizes], n_nodes=[s[1] for s in sizes],
        n_neurons=[s[2] for s in sizes], metric=values.tolist(), metric_full=full, metric_empty=empty,
        faithfulness=((values - empty) / (full - empty)).tolist(), selection=selection, absolute=absolute,
        level=level,
    ))


def area_scores(curve: pd.DataFrame) -> dict[str, float]:
    """MIB's CPR (area under f) and CMD (area under |1 − f|) over the curve's edge, node or unit fractions
    (trapezoids)."""
    x = curve["fraction"].to_numpy(dtype=float)
    f = curve["faithfulness"].to_numpy(dtype=float)
    return dict(cpr=float(np.trapezoid(f, x)), cmd=float(np.trapezoid(np.abs(1 - f), x)))
