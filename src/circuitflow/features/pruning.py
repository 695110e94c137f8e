"""Influence, pruning and scores of an attribution graph (docs/definitions.md#attribution-graph-pruning-and-scores).

An attribution graph has nodes (features, error nodes, token embeddings, logits) and an adjacency matrix
``adjacency[target, source]``: the direct linear effect of ``source`` on ``target`` in the replacement model. The graph
is acyclic (every edge goes forward in layers, or from an earlier position), so the matrix is nilpotent.

*Normalized* adjacency ``Â``: absolute values, each row divided by its sum, so ``Â[t, s]`` is the share of target
``t``'s (absolute) input that comes directly from ``s``; rows of nodes without inputs (embeddings, errors) stay 0.

*Influence* of node ``s``: the logit weights ``w`` (the logits' probabilities on the logit nodes, 0 elsewhere)
propagated back along every path of length >= 1::

    influence = w Â + w Â² + w Â³ + ... = w ((I − Â)⁻¹ − I)            # [n_nodes]

The series stops (``Â`` is nilpotent); the linear system gives the same numbers. Because the rows of ``Â`` sum to 1,
influence is conserved: the influence arriving at the nodes without inputs (embeddings and errors) adds up to
``sum(w)``. *Edge influence* of ``s → t`` is ``Â[t, s] · (influence[t] + w[t])``.

*Pruning* keeps the nodes carrying ``node_threshold`` of the total influence (largest first), always the embeddings
and logits; renormalizes the adjacency between kept nodes and keeps the edges carrying ``edge_threshold`` of the total
edge influence; then, until nothing changes, drops features and error nodes without a kept outgoing edge and features
without a kept incoming edge.

*Replacement score*: the share of the influence reaching embeddings among that reaching embeddings or error nodes, the
share of the logits' weight that flows from the tokens to the logits through features only. *Completeness score*:
the share of each node's normalized input that does not come from error nodes, averaged over nodes weighted by
``influence + w``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from circuitflow.features.attribution import AttributionGraph

KINDS = ("feature", "error", "embedding", "logit")
InfluenceMethod = Literal["series", "solve"]


class NodeKinds(NamedTuple):
    """Boolean masks ``[n_nodes]`` of each node kind, and the logit nodes' indices ``[n_logits]``."""

    feature: Tensor
    error: Tensor
    embedding: Tensor
    logit: Tensor
    logit_index: Tensor


def node_kinds(graph: AttributionGraph) -> NodeKinds:
    """The node-kind masks of ``graph`` (from ``graph.nodes["kind"]``), checked against its tensors."""
    kind = graph.nodes["kind"].to_numpy()
    unknown = sorted(set(kind) - set(KINDS))
    if unknown:
        raise ValueError(f"graph.nodes['kind'] has unknown kinds {unknown}; use one of {KINDS}")
    n = len(kind)
    if tuple(graph.adjacency.shape) != (n, n):
        raise ValueError(f"graph.adjacency must be [n_nodes, n_nodes] = [{n}, {n}], got {list(graph.adjacency.shape)}")
    masks = {k: torch.as_tensor(kind == k, device=graph.adjacency.device) for k in KINDS}
    logit_index = masks["logit"].nonzero().squeeze(1)
    if len(logit_index) != len(graph.logit_probabilities):
        raise ValueError(f"graph.logit_probabilities has {len(graph.logit_probabilities)} entries for "
                         f"{len(logit_index)} logit nodes; give one probability per logit node")
    return NodeKinds(**masks, logit_index=logit_index)


def normalize_matrix(adjacency: Tensor) -> Tensor:
    """``|adjacency|`` ``[n, n]`` with each row divided by its sum; rows summing to 0 stay 0."""
    absolute = adjacency.abs()
    total = absolute.sum(dim=1, keepdim=True)
    return absolute / torch.where(total > 0, total, torch.ones_like(total))


def _node_weights(normalized: Tensor, logit_weights: Tensor, logit_index: Tensor) -> Tensor:
    """``w`` ``[n_nodes]``: the logit weights placed on the logit nodes, 0 elsewhere."""
    weights = torch.zeros(normalized.shape[0], dtype=normalized.dtype, device=normalized.device)
    weights[logit_index] = logit_weights.to(normalized)
    return weights


def influence(normalized: Tensor, logit_weights: Tensor, logit_index: Tensor,
              method: InfluenceMethod = "series") -> Tensor:
    """Influence ``[n_nodes]`` of every node on the weighted logits: ``w (Â + Â² + ...)``.

    ``normalized`` is ``Â`` ``[n, n]`` (:func:`normalize_matrix`), ``logit_weights`` ``[n_logits]`` the weights of the
    logit nodes at ``logit_index`` ``[n_logits]``. ``method="series"`` sums the (terminating) power series, one
    matrix-vector product per path length; ``"solve"`` solves ``y (I − Â) = w`` and returns ``y − w``.
    """
    weights = _node_weights(normalized, logit_weights, logit_index)
    if method == "solve":
        eye = torch.eye(normalized.shape[0], dtype=normalized.dtype, device=normalized.device)
        return torch.linalg.solve(eye - normalized.T, weights) - weights
    if method != "series":
        raise ValueError(f"influence method must be 'series' or 'solve', not {method!r}")
    term = weights @ normalized
    total = term.clone()
    for _ in range(normalized.shape[0]):  # a path visits each node at most once: at most n - 1 terms are nonzero
        if not term.any():
            return total
        term = term @ normalized
        total += term
    raise ValueError("the adjacency has a cycle (the influence series does not terminate); an attribution graph "
                     "must be acyclic")


def edge_influence(normalized: Tensor, logit_weights: Tensor, logit_index: Tensor) -> Tensor:
    """Edge influence ``[n, n]``: ``Â[t, s] · (influence[t] + w[t])`` for each edge ``s → t``."""
    through = influence(normalized, logit_weights, logit_index) + _node_weights(normalized, logit_weights, logit_index)
    return normalized * through[:, None]


def graph_influence(graph: AttributionGraph) -> Tensor:
    """Node influence ``[n_nodes]`` of ``graph``, with the logit probabilities as logit weights."""
    kinds = node_kinds(graph)
    return influence(normalize_matrix(graph.adjacency), graph.logit_probabilities, kinds.logit_index)


def cumulative_influence(scores: Tensor) -> Tensor:
    """Per node ``[n]``: the share of the total influence held by the nodes ranked up to it (largest first).

    The most influential node gets its own share, the least influential 1 (all 0 when no node has influence); this
    is the ``influence`` field of circuit-tracer's graph JSON (its viewer keeps the nodes at or below a threshold).
    """
    ordered, order = torch.sort(scores, descending=True, stable=True)
    total = ordered.sum()
    cumulative = torch.empty_like(scores)
    cumulative[order] = ordered.cumsum(0) / torch.where(total > 0, total, torch.ones_like(total))
    return cumulative


def _threshold(scores: Tensor, fraction: float) -> Tensor:
    """The smallest score among the largest scores that together hold ``fraction`` of ``sum(scores)`` (inf if 0)."""
    ordered = torch.sort(scores.flatten(), descending=True).values
    total = ordered.sum()
    if total <= 0:
        return torch.tensor(float("inf"), dtype=scores.dtype, device=scores.device)
    cumulative = ordered.cumsum(0) / total
    position = torch.searchsorted(cumulative, torch.tensor([fraction], dtype=cumulative.dtype, device=scores.device))
    return ordered[position.clamp(max=len(ordered) - 1)][0]


def _pruned_edge_influence(graph: AttributionGraph, kinds: NodeKinds, node_mask: Tensor) -> Tensor:
    """Edge influence ``[n, n]`` in the graph restricted to ``node_mask`` (renormalized over the kept inputs)."""
    kept = node_mask[:, None] & node_mask[None, :]
    restricted = torch.where(kept, graph.adjacency, torch.zeros_like(graph.adjacency))
    return edge_influence(normalize_matrix(restricted), graph.logit_probabilities, kinds.logit_index)


def _drop_dangling(kinds: NodeKinds, node_mask: Tensor, edge_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop, until nothing changes, features/errors without kept outgoing edges and features without incoming ones.

    Edges touching dropped nodes are dropped too. Each round can only strand nodes one step further from the logits
    or the embeddings, so the rounds are at most the graph's depth.
    """
    must_send = kinds.feature | kinds.error
    while True:
        edge_mask = edge_mask & node_mask[:, None] & node_mask[None, :]
        stranded = (must_send & ~edge_mask.any(dim=0)) | (kinds.feature & ~edge_mask.any(dim=1))
        if not (node_mask & stranded).any():
            return node_mask, edge_mask
        node_mask = node_mask & ~stranded


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
          ) -> tuple[Tensor, Tensor]:
    """``(node_mask [n_nodes], edge_mask [n_nodes, n_nodes])`` of the pruned graph (``edge_mask[target, source]``).

    Keeps the nodes holding ``node_threshold`` of the total node influence and the edges holding ``edge_threshold`` of
    the edge influence among them; embeddings and logits are always kept (see the module docstring).
    """
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    kinds = node_kinds(graph)
    scores = graph_influence(graph)
    node_mask = (scores >= _threshold(scores, node_threshold)) | kinds.embedding | kinds.logit
    edges = _pruned_edge_influence(graph, kinds, node_mask)
    edge_mask = (edges >= _threshold(edges, edge_threshold)) & (graph.adjacency != 0)
    return _drop_dangling(kinds, node_mask, edge_mask)


def _top(scores: Tensor, count: int, eligible: Tensor) -> Tensor:
    """Mask (shape of ``scores``) of the ``count`` largest positive scores among the ``eligible`` entries."""
    candidates = eligible & (scores > 0)
    ranked = torch.where(candidates, scores, torch.full_like(scores, -torch.inf)).flatten()
    mask = torch.zeros_like(candidates).flatten()
    mask[ranked.topk(min(count, int(candidates.sum()))).indices] = True
    return mask.reshape(scores.shape)


def prune_to_budget(graph: AttributionGraph, max_nodes: int, max_edges: int) -> tuple[Tensor, Tensor]:
    """``(node_mask, edge_mask)`` keeping the ``max_nodes`` most influential features and error nodes (plus every
    embedding and logit) and, among those, the ``max_edges`` edges of largest edge influence; then drops stranded
    nodes as :func:`prune` does."""
    for name, value in (("max_nodes", max_nodes), ("max_edges", max_edges)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    kinds = node_kinds(graph)
    node_mask = _top(graph_influence(graph), max_nodes, kinds.feature | kinds.error) | kinds.embedding | kinds.logit
    edges = _pruned_edge_influence(graph, kinds, node_mask)
    edge_mask = _top(edges, max_edges, graph.adjacency != 0)
    return _drop_dangling(kinds, node_mask, edge_mask)


def replacement_score(graph: AttributionGraph) -> float:
    """Influence on the embeddings / influence on embeddings and error nodes (NaN when both are 0)."""
    kinds = node_kinds(graph)
    scores = graph_influence(graph)
    tokens, errors = scores[kinds.embedding].sum(), scores[kinds.error].sum()
    return (tokens / (tokens + errors)).item()


def completeness_score(graph: AttributionGraph) -> float:
    """Average over nodes, weighted by ``influence + w``, of each node's share of normalized input not from errors."""
    kinds = node_kinds(graph)
    normalized = normalize_matrix(graph.adjacency)
    weights = _node_weights(normalized, graph.logit_probabilities, kinds.logit_index)
    output_influence = influence(normalized, graph.logit_probabilities, kinds.logit_index) + weights
    non_error = 1 - normalized[:, kinds.error].sum(dim=1)
    return ((non_error * output_influence).sum() / output_influence.sum()).item()
