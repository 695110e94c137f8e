"""Influence, pruning, replacement/completeness scores and circuit-tracer JSON of attribution graphs
(docs/definitions.md#attribution-graph-pruning-and-scores, #circuit-tracer-graph-json), on hand-made DAGs whose
numbers are worked out by hand or by a slow independent reference."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from circuitflow.features.pruning import (
    completeness_score,
    cumulative_influence,
    edge_influence,
    graph_influence,
    influence,
    normalize_matrix,
    prune,
    prune_to_budget,
    replacement_score,
)
from circuitflow.features.tracer_json import to_circuit_tracer_json, write_circuit_tracer_json, write_graph_index


@dataclass
class Graph:
    """The fields of circuitflow.features.attribution.AttributionGraph that pruning and the JSON read."""

    nodes: pd.DataFrame
    adjacency: Tensor
    logit_probabilities: Tensor
    prompt: str = "1+2="
    tokens: list[str] = field(default_factory=lambda: ["1", "+", "2", "="])
    model: str = "toy"


def make_graph(nodes: list[tuple], edges: dict[tuple[int, int], float], probs: list[float]) -> Graph:
    """``nodes``: (kind, site, layer, position, feature, token) rows; ``edges``: {(target, source): weight}."""
    table = pd.DataFrame(nodes, columns=["kind", "site", "layer", "position", "feature", "token"])
    table["activation"] = np.arange(len(table), dtype=float) + 0.5
    table["label"] = [f"{k}{i}" for i, k in enumerate(table["kind"])]
    adjacency = torch.zeros(len(table), len(table), dtype=torch.float64)
    for (target, source), weight in edges.items():
        adjacency[target, source] = weight
    return Graph(table, adjacency, torch.tensor(probs, dtype=torch.float64))


F = ("feature", "mlp", 0, 3, 7, "2")
EMB = ("embedding", "", -1, 3, -1, "=")
LOGIT = ("logit", "", 2, 3, -1, "3")


def feature(n: int, layer: int = 0) -> tuple:
    return ("feature", "mlp", layer, 3, n, "=")


def error(layer: int = 0, site: str = "mlp", position: int = 3) -> tuple:
    return ("error", site, layer, position, -1, "=")


def random_dag(n: int, seed: int, density: float = 0.4) -> tuple[Tensor, Tensor]:
    """A random DAG's adjacency (a permuted strictly lower-triangular matrix, signed) and its topological order."""
    generator = torch.Generator().manual_seed(seed)
    lower = torch.randn(n, n, generator=generator, dtype=torch.float64).tril(-1)
    lower *= torch.rand(n, n, generator=generator, dtype=torch.float64) < density
    order = torch.randperm(n, generator=generator)
    adjacency = torch.zeros_like(lower)
    adjacency[order[:, None], order[None, :]] = lower
    return adjacency, order


def power_sum(normalized: Tensor, weights: Tensor) -> Tensor:
    """Reference influence: w (Â + Â² + ... + Âⁿ) with explicit matrix powers."""
    total, power = torch.zeros_like(weights), torch.eye(len(weights), dtype=weights.dtype)
    for _ in range(len(weights)):
        power = power @ normalized
        total += weights @ power
    return total


# --- influence ---------------------------------------------------------------------------------------------------

def test_normalize_matrix_takes_absolute_row_shares_and_keeps_zero_rows():
    normalized = normalize_matrix(torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.0, 3.0], [2.0, 2.0, 0.0]]))
    assert torch.equal(normalized, torch.tensor([[0.0, 0.0, 0.0], [0.25, 0.0, 0.75], [0.5, 0.5, 0.0]]))


@pytest.mark.parametrize("method", ["series", "solve"])
def test_chain_embedding_feature_logit_has_influence_one_on_each(method):
    graph = make_graph([F, EMB, LOGIT], {(0, 1): 2.0, (2, 0): -3.0}, [1.0])
    scores = influence(normalize_matrix(graph.adjacency), graph.logit_probabilities, torch.tensor([2]), method)
    assert torch.allclose(scores, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("method", ["series", "solve"])
def test_parallel_paths_split_influence_by_absolute_weight(method):
    # emb -> f0 -> logit (|3|) and emb -> f1 -> logit (|-1|): f0 carries 3/4, f1 1/4, the embedding all of it
    graph = make_graph([feature(0), feature(1), EMB, LOGIT], {(3, 0): 3.0, (3, 1): -1.0, (0, 2): 1.0, (1, 2): 5.0},
                       [0.8])
    scores = influence(normalize_matrix(graph.adjacency), graph.logit_probabilities, torch.tensor([3]), method)
    assert torch.allclose(scores, 0.8 * torch.tensor([0.75, 0.25, 1.0, 0.0], dtype=torch.float64))
    edges = edge_influence(normalize_matrix(graph.adjacency), graph.logit_probabilities, torch.tensor([3]))
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[3, 0], expected[3, 1], expected[0, 2], expected[1, 2] = 0.6, 0.2, 0.6, 0.2
    assert torch.allclose(edges, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_series_and_solve_agree_with_explicit_matrix_powers_on_random_dags(seed):
    adjacency, order = random_dag(40, seed)
    normalized = normalize_matrix(adjacency)
    logit_index = order[-3:]  # the last nodes in topological order
    logit_weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    weights = torch.zeros(40, dtype=torch.float64)
    weights[logit_index] = logit_weights
    series = influence(normalized, logit_weights, logit_index, "series")
    solve = influence(normalized, logit_weights, logit_index, "solve")
    reference = power_sum(normalized, weights)
    assert reference.abs().sum() > 0
    assert torch.allclose(series, reference) and torch.allclose(solve, reference)
    # influence is conserved: the flow (influence + w) ending at the nodes without inputs is all the logits put in
    sources = adjacency.abs().sum(1) == 0
    assert torch.isclose((reference + weights)[sources].sum(), weights.sum())


def test_influence_refuses_a_cycle_and_an_unknown_method():
    cycle = normalize_matrix(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="cycle"):
        influence(cycle, torch.tensor([1.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="method"):
        influence(cycle, torch.tensor([1.0]), torch.tensor([0]), "inverse")


def test_cumulative_influence_ranks_largest_first():
    cumulative = cumulative_influence(torch.tensor([1.0, 3.0, 0.0, 1.0]))
    assert torch.allclose(cumulative, torch.tensor([0.8, 0.6, 1.0, 1.0]))


# --- pruning -----------------------------------------------------------------------------------------------------

def reference_prune(graph: Graph, node_threshold: float, edge_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Slow reference: matrix inverse for influence, explicit loops for thresholds and stranded nodes."""
    kind = graph.nodes["kind"].to_numpy()
    n = len(kind)

    def normalized(matrix):
        absolute = np.abs(matrix)
        sums = absolute.sum(1, keepdims=True)
        return np.divide(absolute, sums, out=np.zeros_like(absolute), where=sums > 0)

    def node_influence(matrix):
        w = np.zeros(n)
        w[kind == "logit"] = graph.logit_probabilities.numpy()
        return w @ (np.linalg.inv(np.eye(n) - normalized(matrix)) - np.eye(n)), w

    def threshold(values, fraction):
        ordered = sorted(values.ravel(), reverse=True)
        running = 0.0
        for value in ordered:
            running += value
            if running / sum(ordered) >= fraction - 1e-12:
                return value
        return ordered[-1]

    adjacency = graph.adjacency.numpy()
    scores, _ = node_influence(adjacency)
    keep = (scores >= threshold(scores, node_threshold)) | np.isin(kind, ["embedding", "logit"])
    restricted = adjacency * keep[:, None] * keep[None, :]
    pruned_scores, w = node_influence(restricted)
    edges = normalized(restricted) * (pruned_scores + w)[:, None]
    edge_keep = (edges >= threshold(edges, edge_threshold)) & (adjacency != 0)
    changed = True
    while changed:
        changed = False
        for i in range(n):
            edge_keep[i, :] &= keep[i]
            edge_keep[:, i] &= keep[i]
        for i in range(n):
            stranded = (kind[i] in ("feature", "error") and not edge_keep[:, i].any()) or \
                (kind[i] == "feature" and not edge_keep[i, :].any())
            if keep[i] and stranded:
                keep[i], changed = False, True
    return keep, edge_keep


def layered_graph(seed: int) -> Graph:
    """A random 3-layer graph at one position: embedding + 3 errors, 4 features per layer, 2 logits."""
    rng = np.random.default_rng(seed)
    nodes = [feature(i, layer) for layer in range(3) for i in range(4)] + [error(layer) for layer in range(3)]
    nodes += [EMB, LOGIT, ("logit", "", 2, 3, -1, "4")]
    layer_of = [n[2] for n in nodes[:12]] + [0, 1, 2, -1, 3, 3]
    edges = {}
    for target in range(len(nodes)):
        for source in range(len(nodes)):
            target_layer, source_layer = layer_of[target], layer_of[source]
            if nodes[target][0] in ("feature", "logit") and nodes[source][0] != "logit" \
                    and source_layer < target_layer and rng.random() < 0.7:
                edges[(target, source)] = float(rng.normal() * rng.choice([0.01, 1.0]))
    return make_graph(nodes, edges, [0.7, 0.2])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("node_threshold", "edge_threshold"), [(0.8, 0.98), (0.5, 0.7), (1.0, 1.0)])
def test_prune_matches_a_slow_reference(seed, node_threshold, edge_threshold):
    graph = layered_graph(seed)
    node_mask, edge_mask = prune(graph, node_threshold, edge_threshold)
    reference_nodes, reference_edges = reference_prune(graph, node_threshold, edge_threshold)
    assert np.array_equal(node_mask.numpy(), reference_nodes)
    assert np.array_equal(edge_mask.numpy(), reference_edges)
    kind = graph.nodes["kind"].to_numpy()
    assert node_mask.numpy()[np.isin(kind, ["embedding", "logit"])].all()
    assert not (edge_mask & ~(node_mask[:, None] & node_mask[None, :])).any()


def test_prune_drops_the_weak_path_and_keeps_logits_and_embeddings():
    # f0 carries 99% of the logit's input, f1 1%; a second embedding feeds nothing
    graph = make_graph([feature(0), feature(1), EMB, ("embedding", "", -1, 2, -1, "2"), LOGIT],
                       {(4, 0): 99.0, (4, 1): 1.0, (0, 2): 1.0, (1, 2): 1.0}, [1.0])
    node_mask, edge_mask = prune(graph, node_threshold=0.8, edge_threshold=0.98)
    assert node_mask.tolist() == [True, False, True, True, True]
    assert edge_mask.nonzero().tolist() == [[0, 2], [4, 0]]
    node_mask, edge_mask = prune(graph, node_threshold=0.0, edge_threshold=0.0)
    assert node_mask.tolist() == [False, False, True, True, True]  # only the top node (the embedding), and forced
    assert not edge_mask.any()


def test_prune_keeps_an_influential_error_node_and_drops_a_negligible_one():
    graph = make_graph([feature(0), error(0), error(1), EMB, LOGIT],
                       {(4, 0): 1.0, (4, 1): 2.0, (4, 2): 0.001, (0, 3): 1.0}, [1.0])
    node_mask, _ = prune(graph)
    assert node_mask.tolist() == [True, True, False, True, True]


def test_prune_refuses_thresholds_outside_zero_one():
    graph = make_graph([F, EMB, LOGIT], {(0, 1): 1.0, (2, 0): 1.0}, [1.0])
    with pytest.raises(ValueError, match="edge_threshold"):
        prune(graph, 0.8, 1.5)


def test_prune_to_budget_keeps_the_top_nodes_then_the_top_edges():
    # three features share the embedding's path to the logit 6 : 3 : 1
    graph = make_graph([feature(0), feature(1), feature(2), EMB, LOGIT],
                       {(4, 0): 6.0, (4, 1): -3.0, (4, 2): 1.0, (0, 3): 1.0, (1, 3): 1.0, (2, 3): 1.0}, [1.0])
    node_mask, edge_mask = prune_to_budget(graph, max_nodes=2, max_edges=4)
    assert node_mask.tolist() == [True, True, False, True, True]
    assert edge_mask.nonzero().tolist() == [[0, 3], [1, 3], [4, 0], [4, 1]]
    node_mask, edge_mask = prune_to_budget(graph, max_nodes=2, max_edges=2)  # f1 loses both edges
    assert node_mask.tolist() == [True, False, False, True, True]
    assert edge_mask.nonzero().tolist() == [[0, 3], [4, 0]]
    with pytest.raises(ValueError, match="max_nodes"):
        prune_to_budget(graph, max_nodes=-1, max_edges=2)


# --- scores ------------------------------------------------------------------------------------------------------

def test_replacement_score_is_one_without_error_weight_and_zero_when_errors_carry_everything():
    clean = make_graph([F, error(0), EMB, LOGIT], {(0, 2): 1.0, (3, 0): 2.0}, [1.0])
    assert replacement_score(clean) == pytest.approx(1.0)
    assert completeness_score(clean) == pytest.approx(1.0)
    errors_only = make_graph([F, error(0), EMB, LOGIT], {(0, 1): 1.0, (3, 0): 2.0, (3, 1): 1.0}, [1.0])
    assert replacement_score(errors_only) == pytest.approx(0.0)


def test_scores_of_a_hand_computed_graph():
    # nodes: f (input: emb 1, err0 1), err0, err1, emb, logit (input: f 3, err1 1)
    graph = make_graph([F, error(0), error(1), EMB, LOGIT], {(0, 3): 1.0, (0, 1): -1.0, (4, 0): 3.0, (4, 2): 1.0},
                       [1.0])
    # influence: f 3/4, err0 3/8, err1 1/4, emb 3/8 -> replacement = (3/8) / (3/8 + 3/8 + 1/4)
    assert torch.allclose(graph_influence(graph), torch.tensor([0.75, 0.375, 0.25, 0.375, 0.0], dtype=torch.float64))
    assert replacement_score(graph) == pytest.approx(0.375)
    # non-error input shares: f 1/2, logit 3/4, sources 1; weights (influence + w): .75 .375 .25 .375 1
    assert completeness_score(graph) == pytest.approx((0.75 * 0.5 + 0.375 + 0.25 + 0.375 + 0.75) / 2.75)


def test_node_kinds_are_checked():
    graph = make_graph([F, EMB, LOGIT], {(0, 1): 1.0, (2, 0): 1.0}, [1.0, 0.5])
    with pytest.raises(ValueError, match="logit_probabilities"):
        prune(graph)
    graph = make_graph([("neuron", "", 0, 0, 0, "x"), EMB, LOGIT], {}, [1.0])
    with pytest.raises(ValueError, match="kind"):
        replacement_score(graph)


# --- circuit-tracer JSON -----------------------------------------------------------------------------------------

def json_graph() -> Graph:
    """MLP and attention features and errors at colliding (layer, feature, position) numbers, awkward tokens."""
    nodes = [
        ("feature", "mlp", 0, 1, 3, ", x"),  # circuit-tracer's id "0_3_1" would equal the error of layer 3 at 1
        ("feature", "attn", 0, 1, 3, ", x"),
        ("feature", "mlp", 3, 1, 5, ", x"),
        ("feature", "mlp", 1, 0, 9, "a_b"),  # negligible
        error(3, "mlp", 1), error(3, "attn", 1), error(0, "mlp", 0),
        ("embedding", "", -1, 0, -1, "a_b"), ("embedding", "", -1, 1, -1, ", x"),
        ("logit", "", 4, 1, -1, "7"), ("logit", "", 4, 1, -1, '"8"'),
    ]
    edges = {(0, 8): 1.0, (1, 8): 2.0, (2, 0): 1.5, (2, 1): -1.0, (2, 4): 0.5, (3, 7): 1e-4,
             (9, 2): 3.0, (9, 5): 1.0, (10, 2): -2.0, (10, 3): 1e-4, (10, 6): 0.3}
    return make_graph(nodes, edges, [0.6, 0.3])


def test_tracer_json_has_every_kept_node_and_edge_with_the_viewer_fields(tmp_path):
    graph = json_graph()
    node_mask, edge_mask = prune(graph, 0.95, 0.99)
    assert not node_mask[3] and node_mask[[0, 1, 2, 4, 5]].all()
    data = to_circuit_tracer_json(graph, node_mask, edge_mask, "add-7", scan="toy-transcoders", node_threshold=0.95)
    nodes, links = data["nodes"], data["links"]
    ids = [n["node_id"] for n in nodes]
    assert len(set(ids)) == len(ids)
    assert set(data["metadata"]) == {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
                                     "schema_version"}
    assert data["metadata"]["slug"] == "add-7" and data["metadata"]["prompt_tokens"] == graph.tokens
    assert set(data["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    fields = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
              "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}
    assert all(set(n) == fields for n in nodes)
    assert all("," not in i for i in ids)  # the viewer splits pinned ids on commas
    expected_ids = {0: "0_3_1", 1: "A0_3_1", 2: "3_5_1", 4: "err_mlp3_1", 5: "err_attn3_1", 6: "err_mlp0_0",
                    7: "E_a_b_0", 8: "E_%2C%20x_1", 9: "L_7_1", 10: "L_%228%22_1"}
    by_row = {row: expected_ids[row] for row in np.flatnonzero(node_mask.numpy())}
    # every kept edge, between kept nodes, with the adjacency's signed weight
    kept = (edge_mask & node_mask[:, None] & node_mask[None, :]).nonzero().tolist()
    assert sorted((link["source"], link["target"], link["weight"]) for link in links) == sorted(
        (by_row[s], by_row[t], graph.adjacency[t, s].item()) for t, s in kept)
    # kept nodes with a link, and every embedding and logit, are in the JSON
    linked = {link["source"] for link in links} | {link["target"] for link in links}
    assert set(ids) == linked | {by_row[r] for r in (7, 8, 9, 10)}
    node = {n["node_id"]: n for n in nodes}
    assert node["3_5_1"]["feature"] == (3 + 5) * (3 + 5 + 1) // 2 + 5
    assert node["3_5_1"]["feature_type"] == "cross layer transcoder" and node["3_5_1"]["activation"] == 2.5
    assert node["3_5_1"]["layer"] == "3" and node["E_a_b_0"]["layer"] == "E" and node["L_7_1"]["layer"] == "5"
    assert node["err_attn3_1"]["feature_type"] == "attn reconstruction error"
    assert node["L_7_1"]["is_target_logit"] and not node["L_%228%22_1"]["is_target_logit"]
    assert node["L_7_1"]["token_prob"] == pytest.approx(0.6) and node["L_7_1"]["clerp"] == 'Output "7" (p=0.600)'
    assert node["L_7_1"]["influence"] is None and node["E_a_b_0"]["activation"] is None
    cumulative = cumulative_influence(graph_influence(graph))
    assert node["0_3_1"]["influence"] == pytest.approx(cumulative[0].item())
    path = write_circuit_tracer_json(graph, node_mask, edge_mask, "add-7", tmp_path / "add-7.json",
                                     scan="toy-transcoders", node_threshold=0.95)
    assert json.loads(path.read_text()) == json.loads(json.dumps(data))
    index = json.loads(write_graph_index(tmp_path).read_text())
    assert [g["slug"] for g in index["graphs"]] == ["add-7"]


def test_tracer_json_uses_token_ids_when_the_graph_has_them_and_hashes_a_scan_list():
    graph = json_graph()
    graph.nodes["token_id"] = -1
    graph.nodes.loc[9, "token_id"], graph.nodes.loc[10, "token_id"] = 22, 23
    node_mask, edge_mask = prune(graph, 1.0, 1.0)
    data = to_circuit_tracer_json(graph, node_mask, edge_mask, "g", scan=["mlp0", "mlp1"])
    logits = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert [(n["node_id"], n["feature"]) for n in logits] == [("L_22_1", 22), ("L_23_1", 23)]
    assert data["metadata"]["scan"].startswith("custom-") and data["metadata"]["transcoder_list"] == ["mlp0", "mlp1"]
    with pytest.raises(ValueError, match="edge_mask"):
        to_circuit_tracer_json(graph, node_mask, edge_mask[:3], "g")
