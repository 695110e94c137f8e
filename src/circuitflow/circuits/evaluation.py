"""Circuit evaluation and faithfulness (``docs/definitions.md#circuit-evaluation`` ff.).

Evaluating a circuit C: every downstream input x_v receives Σ Δ_u over the upstream nodes u whose edge u → v is
not in C (Δ_u = reference_u − u's output in that same run), so the full graph gives the clean run and the empty
graph the fully intervened run. Faithfulness f(C) = (m(C) − m(∅)) / (m(full) − m(∅)) with m the metric averaged
over examples. Over MIB's circuit sizes (fractions of the edges, of the upstream nodes for node-level circuits, of
the ``n_up * d_model`` output units for neuron-level ones), CPR is the area under f and CMD the area under |1 − f|
(trapezoids over the fraction; CPR higher is better, CMD lower is better). Levels
(``docs/definitions.md#circuit-levels``): a node-level circuit is evaluated through its edge mask
(:meth:`Graph.set_nodes`): the nodes outside it have every outgoing edge intervened; a neuron-level circuit also
intervenes, along the kept edges, on the output dimensions it does not keep (:meth:`Graph.cut_units`).
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
                   cut_units: Tensor | None = None) -> Tensor:
    """``[n_masks, N]`` per-example metric of each circuit mask in ``in_graph`` ``[n_masks, n_up, n_down]`` (or
    ``[n_masks, n_up, n_down, pos]``: edges kept at single positions). ``cut_units`` ``[n_masks, n_up, d_model]``
    bool: output dimensions of nodes intervened on along the kept edges too (neuron-level circuits)."""
    valid = tracer.shape.valid.to(in_graph.device)
    missing = (valid[..., None] if in_graph.dim() == 4 else valid).unsqueeze(0) & ~in_graph.bool()
    rows = []
    for batch in batches:
        batch = batch.to(tracer.device)
        clean_logits, _ = tracer.capture(batch.clean, {})
        reference = tracer.reference(batch, intervention, means)
        chunk = max(1, tracer.rows_per_pass(batch.clean.shape[1]) // len(batch))
        values = [metric_values(metric, tracer.run_masked(
            batch, missing[i : i + chunk], reference,
            cut_units=None if cut_units is None else cut_units[i : i + chunk]), clean_logits, batch).double()
            for i in range(0, len(missing), chunk)]
        rows.append(torch.cat(values))
    return torch.cat(rows, dim=1).cpu()


def evaluate_graph(bridge, graph: Graph, batches: Sequence[PairBatch], metric: Metric,
                   intervention: Intervention = "patching", *, means: Tensor | None = None,
                   tracer: Tracer | None = None) -> Tensor:
    """``[N]``: the per-example metric with ``graph.in_graph`` as the circuit (at node level, the valid outgoing
    edges of ``graph.node_in_graph``; at neuron level, those of the nodes with a kept unit, the others intervened)."""
    tracer = tracer or Tracer(bridge)
    cut = graph.cut_units()
    return evaluate_masks(tracer, graph.circuit_edges().unsqueeze(0), batches, metric, intervention, means=means,
                          cut_units=None if cut is None else cut.unsqueeze(0))[0]


def faithfulness_of_masks(tracer: Tracer, masks: Tensor, batches: Sequence[PairBatch], metric: Metric,
                          intervention: Intervention = "patching", *, means: Tensor | None = None,
                          cut_units: Tensor | None = None) -> tuple[Tensor, float, float]:
    """(metric ``[n_masks]`` averaged over examples, m(full), m(∅)) of circuit masks ``[n_masks, n_up, n_down(, pos)]``
    (``cut_units`` as in :func:`evaluate_masks`), the full and empty circuits evaluated in the same pass; refuses a
    metric that does not move between them (faithfulness undefined)."""
    full = tracer.shape.valid.to(masks.device)
    full = full[..., None].expand(masks.shape[1:]) if masks.dim() == 4 else full
    stacked = torch.cat([full[None], torch.zeros_like(full)[None], masks.bool()])
    if cut_units is not None:
        cut_units = torch.cat([torch.zeros_like(cut_units[:2]), cut_units])
    values = evaluate_masks(tracer, stacked, batches, metric, intervention, means=means,
                            cut_units=cut_units).mean(1).double()
    m_full, m_empty = float(values[0]), float(values[1])
    gap = m_full - m_empty
    if not math.isfinite(gap) or abs(gap) < 1e-12:
        raise FloatingPointError(f"the metric does not change between the full model ({m_full:.4g}) and the empty "
                                 f"circuit ({m_empty:.4g}): faithfulness is undefined; use other prompts or a metric")
    return values[2:], m_full, m_empty


def faithfulness_curve(bridge, graph: Graph, batches: Sequence[PairBatch], metric: Metric,
                       intervention: Intervention = "patching", *, fractions: Sequence[float] = MIB_FRACTIONS,
                       selection: Selection = "topn", absolute: bool = True, level: Level = "edge",
                       means: Tensor | None = None, tracer: Tracer | None = None) -> pd.DataFrame:
    """Faithfulness of the circuits of ``graph`` at each fraction of its edges (``level="node"``: of its upstream
    nodes; ``level="neuron"``: of its ``n_up * d_model`` output units), all sizes evaluated in one batched pass.

    Columns: ``fraction, n_edges, n_nodes, n_neurons, metric, metric_full, metric_empty, faithfulness, selection,
    absolute, level``; ``n_neurons`` counts the output units the circuit keeps (at edge and node level, d_model for
    each writer with an outgoing circuit edge: :meth:`Graph.count_neurons`). The graph's circuit and metadata are
    left as they were.
    """
    check_level(level)
    tracer = tracer or Tracer(bridge)
    kept = graph.in_graph.clone(), graph.node_in_graph, graph.neuron_in_graph, dict(graph.meta)
    total = graph.n_units(level)
    masks, cuts, sizes = [], [], []
    for fraction in fractions:
        graph.select(selection, max(1, math.ceil(fraction * total)), absolute, level=level)
        masks.append(graph.in_graph.clone())
        cuts.append(graph.cut_units())
        sizes.append((graph.n_edges, graph.n_nodes, graph.count_neurons(tracer.anatomy.d_model)))
    graph.in_graph, graph.node_in_graph, graph.neuron_in_graph, graph.meta = kept
    values, full, empty = faithfulness_of_masks(tracer, torch.stack(masks), batches, metric, intervention,
                                                means=means, cut_units=torch.stack(cuts) if level == "neuron" else None)
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
