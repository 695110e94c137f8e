"""LEAP's edge types in an attribution graph (docs/definitions.md#q-and-k-edges-leap).

An edge into a feature of an attention SAE is an **OV** edge when it is an entry of the adjacency matrix (the
source moves the target through the values of the target's attention layer, its pattern frozen) and a **Q** or
**K** edge when it comes from the graph's ``q_adjacency``/``k_adjacency`` (the source moves the target's pattern
through the queries or the keys, to first order). Edges into transcoder features and logits are **direct** edges.

The pruned graph keeps the edges of its ``edge_mask`` (OV and direct: pruning ranks the adjacency, the edges whose
inputs sum to each target's value) and, between the nodes it keeps, the Q and K edges at least as strong as the
weakest kept edge into the same target: a pattern-path input shows up where it rivals what pruning kept of that
target's value-path inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuitflow.features.attribution import AttributionGraph

EDGE_TYPES = ("direct", "OV", "Q", "K")


def _require_qk(graph: AttributionGraph) -> None:
    if graph.qk_targets is None:
        raise ValueError("this graph has no Q and K edges: build it with attribution_graph(..., qk_edges=True)")


def qk_edge_masks(graph: AttributionGraph, node_mask: Tensor, edge_mask: Tensor) -> dict[str, Tensor]:
    """The Q and K edges the pruned graph keeps (see the module docstring), each a mask ``[n_qk, n_nodes]`` over
    ``graph.q_adjacency``/``k_adjacency``; ``node_mask`` ``[n_nodes]`` and ``edge_mask`` ``[n_nodes, n_nodes]`` from
    :func:`~circuitflow.features.pruning.prune`."""
    _require_qk(graph)
    keep = torch.as_tensor(node_mask).cpu().bool()
    kept_edges = torch.as_tensor(edge_mask).cpu().bool() & keep[:, None] & keep[None, :]
    rows = graph.qk_targets.cpu()
    weakest = torch.where(kept_edges[rows], graph.adjacency[rows].abs(), torch.full_like(graph.adjacency[rows],
                                                                                        torch.inf)).min(1).values
    between = keep[rows][:, None] & keep[None, :]
    return {path: between & (matrix != 0) & (matrix.abs() >= weakest[:, None])
            for path, matrix in (("Q", graph.q_adjacency.cpu()), ("K", graph.k_adjacency.cpu()))}


def typed_edges(graph: AttributionGraph, node_mask: Tensor, edge_mask: Tensor) -> pd.DataFrame:
    """The pruned graph's edges with their LEAP type, one row each: ``source``, ``target`` (node indices),
    ``source_label``, ``target_label``, ``type`` (``direct``, ``OV``, ``Q``, ``K``) and ``weight``."""
    keep = torch.as_tensor(node_mask).cpu().bool()
    kept = torch.as_tensor(edge_mask).cpu().bool() & keep[:, None] & keep[None, :]
    attention = ((graph.nodes["kind"] == "feature") & (graph.nodes["site"] == "attn")).to_numpy()
    targets, sources = (index.numpy() for index in kept.nonzero(as_tuple=True))
    frames = [pd.DataFrame(dict(source=sources, target=targets, type=np.where(attention[targets], "OV", "direct"),
                                weight=graph.adjacency[targets, sources].numpy()))]
    if graph.qk_targets is not None:
        rows = graph.qk_targets.cpu().numpy()
        for path, mask in qk_edge_masks(graph, node_mask, edge_mask).items():
            matrix = {"Q": graph.q_adjacency, "K": graph.k_adjacency}[path].cpu()
            at, sources = (index.numpy() for index in mask.nonzero(as_tuple=True))
            frames.append(pd.DataFrame(dict(source=sources, target=rows[at], type=path,
                                            weight=matrix[at, sources].numpy())))
    edges = pd.concat(frames, ignore_index=True)
    labels = graph.nodes["label"].to_numpy()
    edges.insert(2, "source_label", labels[edges["source"].to_numpy()])
    edges.insert(3, "target_label", labels[edges["target"].to_numpy()])
    edges["type"] = pd.Categorical(edges["type"], categories=EDGE_TYPES)
    return edges.sort_values(["target", "type", "source"], ignore_index=True)


def edge_type_shares(graph: AttributionGraph) -> dict[str, float]:
    """How attention features are moved: over every attention-feature target of the whole graph, each type's share
    of Σ|weight| of their OV, Q and K inputs (``ov_share``, ``q_share``, ``k_share``; NaN without attention
    features)."""
    _require_qk(graph)
    rows = graph.qk_targets.cpu()
    totals = {"ov_share": graph.adjacency[rows].abs().sum(), "q_share": graph.q_adjacency.abs().sum(),
              "k_share": graph.k_adjacency.abs().sum()}
    whole = float(sum(totals.values()))
    return {name: float(value) / whole if whole > 0 else float("nan") for name, value in totals.items()}
