"""Edge attribution: EAP, EAP-IG (inputs, activations), clean-corrupted and exact edge patching.

Definitions (``docs/definitions.md#eap`` ff.), for upstream u with output z_u, downstream input x_v, metric L averaged
over N examples and Δ_u = reference_u − z_u(x) (patching: z_u(x'); zero: 0; mean: μ_u):

* ``EAP``: S(u→v) = (1/N) Σ_examples Σ_positions Δ_u · ∂L/∂x_v at the clean run.
* ``EAP-IG-inputs``: the same with the gradient averaged over m runs whose input embedding is
  e' + (k/m)(e − e'), k = 0..m−1 (e' the reference input; prompts of equal token length).
* ``EAP-IG-activations``: for each group of upstream nodes (the input, one layer's heads, one MLP) the gradient is
  averaged over m runs in which only that group's outputs are interpolated, z' + (k/m)(z − z'), k = 1..m; scores of
  edges out of the group use those gradients. O(m · (2L + 1)) passes.
* ``clean-corrupted``: the gradient averaged over the clean run and the run with the reference input.
* ``exact``: S(u→v) = L(only edge u→v intervened) − L(clean): the ground truth, one masked forward per edge
  (batched over edges).

Scores estimate the change of the metric when an edge is intervened on, so with ``logit_diff`` an important edge has
a negative score; select circuits by absolute score unless you want the sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitflow.circuits.data import PairBatch
from circuitflow.circuits.graph import Graph
from circuitflow.circuits.tracing import Intervention, Tracer, metric_values
from circuitflow.metrics import Metric

Method = Literal["EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted", "exact"]
METHODS = ("EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted", "exact")


def input_alphas(method: Method, steps: int) -> list[float]:
    """Interpolation points of the input node (1 = clean, 0 = reference) whose gradients a method averages."""
    if method == "EAP":
        return [1.0]
    if method == "clean-corrupted":
        return [1.0, 0.0]
    if method == "EAP-IG-inputs":
        return [k / steps for k in range(steps)]
    raise ValueError(f"{method} does not interpolate the input")


def upstream_groups(tracer: Tracer) -> list[tuple[str, slice]]:
    """(hook whose output is interpolated, upstream nodes) for each group of EAP-IG-activations, in forward order."""
    g = tracer.shape
    groups = [(tracer.anatomy.input_hook, slice(0, 1))]
    for layer, la in enumerate(tracer.anatomy.layers):
        groups += [(la.hooks["attn_out"], g.head_up(layer)),
                   (la.hooks["mlp_out"], slice(g.mlp_up(layer), g.mlp_up(layer) + 1))]
    return groups


def exact_edge_scores(tracer: Tracer, batch: PairBatch, clean_logits: Tensor, reference: Tensor,
                      metric: Metric) -> Tensor:
    """``[n_up, n_down]``: Σ over the batch of L(only edge u→v intervened) − L(clean), for every valid edge."""
    g = tracer.shape
    edges = g.valid.nonzero()
    base = metric_values(metric, clean_logits, clean_logits, batch).double().sum()
    out = torch.zeros(g.n_up, g.n_down, dtype=torch.float64, device=tracer.device)
    chunk = max(1, tracer.rows_per_pass(batch.clean.shape[1]) // len(batch))
    for start in range(0, len(edges), chunk):
        part = edges[start : start + chunk]
        missing = torch.zeros(len(part), g.n_up, g.n_down, dtype=torch.bool)
        missing[torch.arange(len(part)), part[:, 0], part[:, 1]] = True
        logits = tracer.run_masked(batch, missing, reference)
        values = metric_values(metric, logits, clean_logits, batch).double().sum(1) - base
        out[part[:, 0], part[:, 1]] = values.to(out.device)
    return out


def edge_scores(
    tracer: Tracer,
    batches: Sequence[PairBatch],
    metric: Metric,
    method: Method = "EAP-IG-inputs",
    intervention: Intervention = "patching",
    *,
    ig_steps: int = 5,
    means: Tensor | None = None,
    per_position: bool = False,
    hidden_scores: Tensor | None = None,
    hidden_means: Tensor | None = None,
    progress: bool = True,
) -> tuple[Tensor, Tensor | None, int]:
    """Summed over all examples: edge scores ``[n_up, n_down]`` (``per_position``: ``[n_up, n_down, pos]``, for
    prompts of one token length), node scores split over output dimensions ``[n_up, d_model]`` (None for ``exact``)
    and the number of examples. float64 on the tracer's device; :func:`attribute` averages them into a graph.
    ``hidden_scores`` ``[n_layers, d_mlp]``, if given, receives the MLP hidden neurons' scores Σ Δpost · ∂L/∂post
    (``hidden_means`` from :meth:`Tracer.hidden_means` for the mean interventions)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if hidden_scores is not None and method == "exact":
        raise ValueError("MLP hidden-neuron scores are gradient scores: use EAP or EAP-IG, not exact")
    if ig_steps < 1:
        raise ValueError(f"ig_steps={ig_steps} must be at least 1")
    g, d_model = tracer.shape, tracer.anatomy.d_model
    lengths = {int(batch.clean.shape[1]) for batch in batches}
    if per_position and len(lengths) > 1:
        raise ValueError(f"position-aware scores need prompts of one token length, got lengths {sorted(lengths)}: "
                         "use one template (or filter the prompts by prompt_len)")
    if per_position and method == "exact":
        raise ValueError("exact scores are edge-level here; exact position-aware scores: circuits.positions")
    shape = (g.n_up, g.n_down, *lengths) if per_position else (g.n_up, g.n_down)
    scores = torch.zeros(shape, dtype=torch.float64, device=tracer.device)  # float64 through the mean
    units = None if method == "exact" else torch.zeros(g.n_up, d_model, dtype=torch.float64, device=tracer.device)
    n_examples = 0
    for batch in tqdm(batches, desc=method, disable=not progress, mininterval=5):
        batch = batch.to(tracer.device)
        reference = tracer.reference(batch, intervention, means)
        if method == "exact":
            clean_logits, _ = tracer.capture(batch.clean, {})
            scores += exact_edge_scores(tracer, batch, clean_logits, reference, metric)
        else:
            clean_logits, clean_up = tracer.outputs(batch.clean)
            delta = reference - clean_up
            hidden = dict(hidden_scores=hidden_scores, delta_post=None if hidden_scores is None else
                          tracer.hidden_reference(batch, intervention, hidden_means) - tracer.hidden(batch.clean))
            if method == "EAP-IG-activations":
                for hook, nodes in upstream_groups(tracer):
                    for k in range(1, ig_steps + 1):
                        tracer.gradient_pass(batch, clean_logits, metric, delta, scores,
                                             edits=[(hook, nodes, 1 - k / ig_steps)], up=nodes, weight=1 / ig_steps,
                                             unit_scores=units, **hidden)
            else:
                alphas = input_alphas(method, ig_steps)
                for alpha in alphas:
                    edits = [(tracer.anatomy.input_hook, slice(0, 1), 1 - alpha)] if alpha != 1 else []
                    tracer.gradient_pass(batch, clean_logits, metric, delta, scores, edits=edits,
                                         weight=1 / len(alphas), unit_scores=units, **hidden)
        n_examples += len(batch)
    if n_examples == 0:
        raise ValueError("attribute() got no prompt pairs")
    return scores, units, n_examples


def attribute(
    bridge,
    batches: Sequence[PairBatch],
    metric: Metric,
    method: Method = "EAP-IG-inputs",
    intervention: Intervention = "patching",
    *,
    ig_steps: int = 5,
    means: Tensor | None = None,
    hidden: bool = False,
    hidden_means: Tensor | None = None,
    tracer: Tracer | None = None,
    progress: bool = True,
) -> Graph:
    """Score every edge of ``bridge``'s graph on ``batches`` with ``method`` (see the module docstring).

    ``means`` (from :meth:`Tracer.means`) is needed for the mean interventions. Returns a :class:`Graph` whose
    ``scores`` are averaged over all examples (so splitting the batches differently gives the same scores), whose
    ``node_scores`` are Δ_u · ∂L/∂z_u (the row sums) and whose ``neuron_scores`` ``[n_up, d_model]`` split each node
    score over the node's output dimensions (not for ``exact``), all float64. Every valid edge starts in the circuit.
    ``hidden=True`` also scores the MLPs' hidden neurons into ``hidden_scores`` ``[n_layers, d_mlp]``
    (Δpost · ∂L/∂post; one more clean forward, and a corrupt one under patching, per batch; ``hidden_means`` from
    :meth:`Tracer.hidden_means` for the mean interventions) for MLP-neuron-level circuits.
    """
    tracer = tracer or Tracer(bridge)
    g, a = tracer.shape, tracer.anatomy
    hidden_scores = torch.zeros(a.n_layers, a.d_mlp, dtype=torch.float64, device=tracer.device) if hidden else None
    scores, units, n_examples = edge_scores(tracer, batches, metric, method, intervention, ig_steps=ig_steps,
                                            means=means, hidden_scores=hidden_scores, hidden_means=hidden_means,
                                            progress=progress)
    graph = Graph.empty(g.n_layers, g.n_heads, g.n_kv_heads, g.parallel,
                        meta=dict(method=method, intervention=intervention, n_examples=n_examples,
                                  ig_steps=ig_steps if "IG" in method else None))
    graph.scores = (scores / n_examples).cpu() * graph.valid
    graph.node_scores = graph.scores.sum(1)
    graph.neuron_scores = None if units is None else (units / n_examples).cpu()
    graph.hidden_scores = None if hidden_scores is None else (hidden_scores / n_examples).cpu()
    return graph
