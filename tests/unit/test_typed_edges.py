"""LEAP's edge types (circuitflow.features.typed_edges, docs/definitions.md#q-and-k-edges-leap): the pruned graph's
edges typed OV / direct by their target, the Q and K edges kept by the rule the docs state (checked against a loop
over every entry), the shares of attention features' inputs by type, and their drawing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitflow.features.attribution import attribution_graph
from circuitflow.features.graph_plots import EDGE_STYLES, draw_attribution_graph
from circuitflow.features.pruning import prune
from circuitflow.features.typed_edges import edge_type_shares, qk_edge_masks, typed_edges


@pytest.fixture(scope="module")
def pruned(toy_features):
    """A pruned attribution graph of the trained toy (whose attention patterns matter: it has kept Q and K edges)."""
    bridge, tokenizer, dictionaries = toy_features
    graph = attribution_graph(bridge, tokenizer, "7+5=", dictionaries)
    return (graph, *prune(graph, node_threshold=0.8, edge_threshold=0.98))


def test_pruned_edges_are_typed_by_their_target(pruned):
    graph, node_mask, edge_mask = pruned
    edges = typed_edges(graph, node_mask, edge_mask)
    plain = edges[edges["type"].isin(["OV", "direct"])]
    kept = (edge_mask & node_mask[:, None] & node_mask[None, :]).nonzero().numpy()
    assert sorted(map(tuple, plain[["target", "source"]].to_numpy())) == sorted(map(tuple, kept))
    attention = (graph.nodes["kind"].eq("feature") & graph.nodes["site"].eq("attn")).to_numpy()
    assert (plain["type"].eq("OV").to_numpy() == attention[plain["target"].to_numpy()]).all()
    assert {"OV", "direct", "Q", "K"} <= set(edges["type"])  # the fixture's graph has every type
    targets, sources = (torch.as_tensor(plain[c].to_numpy()) for c in ("target", "source"))
    np.testing.assert_array_equal(plain["weight"].to_numpy(), graph.adjacency[targets, sources].numpy())
    assert (edges["source_label"] == graph.nodes["label"].to_numpy()[edges["source"]]).all()


def test_q_and_k_edges_kept_by_the_stated_rule(pruned):
    """A Q/K edge is kept iff both ends are kept, it is nonzero, and |w| >= the weakest kept edge into its target."""
    graph, node_mask, edge_mask = pruned
    masks = qk_edge_masks(graph, node_mask, edge_mask)
    kept = edge_mask & node_mask[:, None] & node_mask[None, :]
    for path, matrix in (("Q", graph.q_adjacency), ("K", graph.k_adjacency)):
        expected = torch.zeros_like(masks[path])
        for i, target in enumerate(graph.qk_targets.tolist()):
            into = [abs(float(graph.adjacency[target, s])) for s in range(graph.n_nodes) if kept[target, s]]
            for source in range(graph.n_nodes):
                w = float(matrix[i, source])
                expected[i, source] = bool(into and node_mask[target] and node_mask[source] and w != 0
                                           and abs(w) >= min(into))
        assert torch.equal(masks[path], expected) and expected.any()
    edges = typed_edges(graph, node_mask, edge_mask)
    assert (edges["type"] == "Q").sum() == int(masks["Q"].sum())


def test_shares_of_attention_inputs(pruned):
    graph = pruned[0]
    shares = edge_type_shares(graph)
    assert sum(shares.values()) == pytest.approx(1.0) and min(shares.values()) > 0
    ov = graph.adjacency[graph.qk_targets].abs().sum()
    q, k = graph.q_adjacency.abs().sum(), graph.k_adjacency.abs().sum()
    assert shares["q_share"] == pytest.approx(float(q / (ov + q + k)))


def test_graph_without_q_and_k_edges(pruned):
    graph, node_mask, edge_mask = pruned
    plain = type(graph)(**{**vars(graph), "qk_targets": None, "q_adjacency": None, "k_adjacency": None})
    assert set(typed_edges(plain, node_mask, edge_mask)["type"]) == {"OV", "direct"}
    with pytest.raises(ValueError, match=r"qk_edges=True"):
        edge_type_shares(plain)


def test_drawing_has_one_dashed_line_per_q_edge(pruned):
    graph, node_mask, edge_mask = pruned
    edges = typed_edges(graph, node_mask, edge_mask)
    ax = draw_attribution_graph(graph, node_mask, edge_mask).axes[0]
    lines = {c.get_gid(): c for c in ax.collections if (c.get_gid() or "").startswith("edges")}
    assert set(lines) == set(EDGE_STYLES)
    for gid, types in (("edges", ["OV", "direct"]), ("edges:Q", ["Q"]), ("edges:K", ["K"])):
        assert len(lines[gid].get_segments()) == int(edges["type"].isin(types).sum())
    assert lines["edges:Q"].get_linestyle()[0][1] is not None  # dashed, not solid
