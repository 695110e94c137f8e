"""What attribution graphs are worth in the real model (docs/definitions.md#feature-circuit-faithfulness): the
feature-circuit faithfulness curve is anchored at 0 and 1 by construction, total attribution propagates per-unit
effects through downstream features, and on trained dictionaries it predicts exact single-feature ablations."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from circuitflow.features.attribution import AttributionGraph, attribution_graph
from circuitflow.features.graph_analysis import (
    ablation_agreement,
    analyse_prompts,
    circuit_faithfulness,
    total_attribution,
)
from circuitflow.features.pruning import graph_influence

PROMPTS = ["3+4=", "9-2="]


def chain_graph() -> AttributionGraph:
    """embedding → f1 (a=2) → f2 (a=0.5) → logit, and f1 → logit directly: weights chosen by hand."""
    nodes = pd.DataFrame(dict(kind=["feature", "feature", "embedding", "logit"], dictionary=["mlp0", "mlp1", "", ""],
                              site=["mlp", "mlp", "", ""], layer=[0, 1, -1, 2], position=[0, 0, 0, 0],
                              feature=[3, 5, -1, -1], activation=[2.0, 0.5, 1.0, 0.9], token_id=[-1, -1, 7, 8],
                              token=["a", "a", "a", "b"], label=["f1", "f2", "e", "l"]))
    adjacency = torch.zeros(4, 4, dtype=torch.float64)
    adjacency[0, 2] = 2.0  # e -> f1
    adjacency[1, 0] = 0.5  # f1 -> f2: per unit of f1, 0.25
    adjacency[3, 1] = 1.5  # f2 -> logit: per unit of f2, 3
    adjacency[3, 0] = -1.0  # f1 -> logit: per unit of f1, -0.5
    zeros = torch.zeros(4, dtype=torch.float64)
    return AttributionGraph(nodes, adjacency, zeros, zeros, torch.tensor([0.9]), "a", ["a"])


def test_total_attribution_follows_every_path():
    # f1: a · (direct −0.5 + via f2 0.25 · 3) = 2 · 0.25 = 0.5; f2: 0.5 · 3 = 1.5
    torch.testing.assert_close(total_attribution(chain_graph()), torch.tensor([0.5, 1.5], dtype=torch.float64))


@pytest.fixture(scope="module")
def graphs(toy_features):
    bridge, tokenizer, dictionaries = toy_features
    return [attribution_graph(bridge, tokenizer, prompt, dictionaries) for prompt in PROMPTS]


def test_faithfulness_is_anchored(toy_features, graphs):
    bridge, tokenizer, dictionaries = toy_features
    for graph in graphs:
        curve = circuit_faithfulness(bridge, tokenizer, dictionaries, graph, graph_influence(graph), [0, 0.2, 1])
        n = len(graph.index("feature"))
        assert curve["n_features"].tolist() == [0, round(0.2 * n), n]
        assert curve["faithfulness"].iloc[0] == 0 and curve["faithfulness"].iloc[-1] == 1
        logits = bridge(tokenizer(graph.prompt, return_tensors="pt")["input_ids"])[0, -1]
        top = int(graph.nodes.loc[graph.index("logit")[0].item(), "token_id"])
        assert curve["metric"].iloc[-1] == pytest.approx(float(logits[top] - logits.mean()), abs=1e-9)
        assert curve["faithfulness"].iloc[1] > 0.5  # the most influential fifth of the features does most of it


def test_attribution_predicts_exact_ablation(toy_features, graphs):
    """With attention and norms frozen, ablating one feature in the real model moves the top logit by what the
    graph predicts up to the MLPs' difference from their transcoders: the correlation must be high."""
    bridge, tokenizer, dictionaries = toy_features
    for graph in graphs:
        table = ablation_agreement(bridge, tokenizer, dictionaries, graph)
        assert len(table) == len(graph.index("feature"))
        assert table["pearson_frozen"].iloc[0] > 0.9, table["pearson_frozen"].iloc[0]
        assert table["pearson"].notna().all()  # the real model's (live norms) is reported, not asserted


def test_analyse_prompts_writes_graphs_and_tables(toy_features, tmp_path):
    bridge, tokenizer, dictionaries = toy_features
    tables = analyse_prompts(bridge, tokenizer, dictionaries, PROMPTS, tmp_path, node_threshold=0.8,
                             edge_threshold=0.98, fractions=[0, 0.5, 1], model_name="toy", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "graph-metadata.json", "graph_0.json", "graph_0.pt", "graph_1.json", "graph_1.pt"]
    assert len(json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]) == 2
    scores = tables["scores"]
    assert scores["graph"].tolist() == [0, 1] and (scores["completeness_error"] < 1e-8).all()
    assert scores["replacement_score"].between(0, 1).all() and scores["completeness_score"].between(0, 1).all()
    nodes = tables["nodes"]
    assert nodes.groupby("graph")["kept"].sum().gt(0).all() and {"influence", "prompt"} <= set(nodes)
    graph = AttributionGraph.load(tmp_path / "graph_1.pt")
    assert graph.prompt == PROMPTS[1] and len(nodes[nodes["graph"] == 1]) == graph.n_nodes
    assert graph.q_adjacency is not None and scores[["ov_share", "q_share", "k_share"]].sum(axis=1).round(9).eq(1).all()
    edges = tables["edges"]
    assert {"OV", "direct"} <= set(edges["type"]) and set(edges["graph"]) == {0, 1}
    mine, kept = edges[edges["graph"] == 1], nodes.loc[nodes["graph"] == 1, "kept"].to_numpy()
    assert kept[mine["source"]].all() and kept[mine["target"]].all()  # edges of the pruned graph only
    assert (graph.nodes["label"].to_numpy()[mine["target"]] == mine["target_label"]).all()
