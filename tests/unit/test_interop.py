"""Graphs to and from EAP-IG / MIB's JSON format: EAP-IG's edge set and names, a hand-written file with known
numbers, round trips (multi-head, grouped-query, multi-query attention), and one-line errors for bad files."""

from __future__ import annotations

import json

import pytest
import torch

from circuitflow.circuits import Graph
from circuitflow.circuits.interop import from_eap_dict, from_eap_json, to_eap_dict, to_eap_json

# A sequential 1-layer model with 2 heads, written by hand in EAP-IG's format: every edge of the model is listed.
HAND_WRITTEN = {
    "cfg": {"n_layers": 1, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8},
    "nodes": {"input": {"in_graph": True, "score": 0.5}, "a0.h0": {"in_graph": True, "score": -1.0},
              "a0.h1": {"in_graph": False, "score": 2.0}, "m0": {"in_graph": True, "score": 4.0},
              "logits": {"in_graph": True}},
    "edges": {
        "input->a0.h0<q>": {"score": 0.5, "in_graph": True},
        "input->a0.h1<q>": {"score": -0.25, "in_graph": False},
        "input->a0.h0<k>": {"score": 0.25, "in_graph": False},
        "input->a0.h1<k>": {"score": -1.5, "in_graph": True},
        "input->a0.h0<v>": {"score": 1.0, "in_graph": False},
        "input->a0.h1<v>": {"score": 2.0, "in_graph": False},
        "input->m0": {"score": 3.0, "in_graph": True},
        "a0.h0->m0": {"score": -3.5, "in_graph": True},
        "a0.h1->m0": {"score": 0.125, "in_graph": False},
        "input->logits": {"score": 7.0, "in_graph": False},
        "a0.h0->logits": {"score": -0.75, "in_graph": True},
        "a0.h1->logits": {"score": 0.0, "in_graph": False},
        "m0->logits": {"score": 6.0, "in_graph": True},
    },
}


def eap_ig_edge_names(n_layers: int, n_heads: int, parallel: bool) -> set[str]:
    """EAP-IG's edges, built the way its graph grows: every node already in the residual stream feeds each head's
    q, k and v and the MLP (the MLP also reads this layer's heads in a sequential block), and all feed the logits."""
    stream, names = ["input"], set()
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        names |= {f"{w}->{h}<{r}>" for w in stream for h in heads for r in "qkv"}
        mlp_reads = stream if parallel else stream + heads
        names |= {f"{w}->m{layer}" for w in mlp_reads}
        stream = stream + heads + [f"m{layer}"]
    return names | {f"{w}->logits" for w in stream}


def random_graph(n_kv_heads: int, parallel: bool, seed: int = 0) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    graph = Graph.empty(2, 4, n_kv_heads, parallel, meta={"method": "EAP-IG-inputs", "ig_steps": 5})
    graph.scores = torch.randn(graph.n_up, graph.n_down, generator=gen) * graph.valid
    graph.in_graph = graph.valid & (torch.rand(graph.n_up, graph.n_down, generator=gen) < 0.3)
    graph.node_scores = torch.randn(graph.n_up, generator=gen)
    return graph


@pytest.mark.parametrize("parallel", [True, False])
def test_exported_edges_are_eap_igs_edges(parallel):
    doc = to_eap_dict(Graph.empty(3, 4, 4, parallel), d_model=16)
    assert set(doc["edges"]) == eap_ig_edge_names(3, 4, parallel)
    assert set(doc["nodes"]) == {"input", "logits", "m0", "m1", "m2"} | {f"a{l}.h{h}" for l in range(3)
                                                                           for h in range(4)}
    assert doc["cfg"] == dict(n_layers=3, n_heads=4, parallel_attn_mlp=parallel, d_model=16, n_key_value_heads=4)


def test_a_hand_written_file_reads_with_its_numbers(tmp_path):
    path = tmp_path / "circuit.json"
    path.write_text(json.dumps(HAND_WRITTEN))
    graph = from_eap_json(path)
    ups, downs = graph.upstream_names(), graph.downstream_names()
    expected = {("input", "a0.h0<q>"): 0.5, ("input", "a0.h1<q>"): -0.25, ("input", "a0.g0<k>"): 0.25,
                ("input", "a0.g1<k>"): -1.5, ("input", "a0.g0<v>"): 1.0, ("input", "a0.g1<v>"): 2.0,
                ("input", "m0<in>"): 3.0, ("a0.h0", "m0<in>"): -3.5, ("a0.h1", "m0<in>"): 0.125,
                ("input", "logits"): 7.0, ("a0.h0", "logits"): -0.75, ("a0.h1", "logits"): 0.0, ("m0", "logits"): 6.0}
    for (up, down), score in expected.items():
        assert graph.scores[ups.index(up), downs.index(down)] == score, (up, down)
    assert graph.scores.abs().sum() == sum(abs(s) for s in expected.values())  # nothing else is set
    chosen = {(ups[u], downs[d]) for u, d in graph.in_graph.nonzero().tolist()}
    assert chosen == {("input", "a0.h0<q>"), ("input", "a0.g1<k>"), ("input", "m0<in>"), ("a0.h0", "m0<in>"),
                      ("a0.h0", "logits"), ("m0", "logits")}
    assert graph.node_scores.tolist() == [0.5, -1.0, 2.0, 4.0]
    assert (graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.parallel) == (1, 2, 2, False)
    assert graph.meta["d_model"] == 8
    assert to_eap_dict(graph)["edges"] == HAND_WRITTEN["edges"]  # and it writes the same file back


def test_a_hand_written_file_of_a_multi_query_model_sums_each_groups_key_and_value_edges():
    graph = from_eap_dict(HAND_WRITTEN, n_kv_heads=1)
    ups, downs = graph.upstream_names(), graph.downstream_names()
    assert downs[: 4] == ["a0.h0<q>", "a0.h1<q>", "a0.g0<k>", "a0.g0<v>"]
    assert graph.scores[ups.index("input"), : 4].tolist() == [0.5, -0.25, 0.25 - 1.5, 1.0 + 2.0]
    assert graph.in_graph[ups.index("input"), : 4].tolist() == [True, False, True, False]  # k: one head keeps it


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("parallel", [True, False])
def test_round_trip_keeps_scores_membership_node_scores_and_meta(tmp_path, n_kv_heads, parallel):
    graph = random_graph(n_kv_heads, parallel)
    to_eap_json(graph, tmp_path / "g.json", d_model=32)
    back = from_eap_json(tmp_path / "g.json")
    assert (back.n_layers, back.n_heads, back.n_kv_heads, back.parallel) == (2, 4, n_kv_heads, parallel)
    torch.testing.assert_close(back.scores, graph.scores, rtol=1e-6, atol=0)
    assert torch.equal(back.in_graph, graph.in_graph)
    assert torch.equal(back.node_scores, graph.node_scores)
    assert back.meta == {**graph.meta, "d_model": 32}


def test_export_splits_a_key_value_heads_score_over_its_query_heads():
    graph = random_graph(n_kv_heads=2, parallel=True, seed=3)
    edges = to_eap_dict(graph, d_model=32)["edges"]
    ups, downs = graph.upstream_names(), graph.downstream_names()
    for layer in range(2):
        for head in range(4):
            for role in "kv":
                ours = downs.index(f"a{layer}.g{head // 2}<{role}>")
                for u in range(graph.upstream_before(layer, "attn")):
                    edge = edges[f"{ups[u]}->a{layer}.h{head}<{role}>"]
                    assert edge["score"] == pytest.approx(float(graph.scores[u, ours]) / 2, rel=1e-12)
                    assert edge["in_graph"] == bool(graph.in_graph[u, ours])


def test_exported_nodes_follow_eap_igs_membership():
    """EAP-IG keeps a node with an outgoing circuit edge and an incoming one (the input needs none)."""
    graph = Graph.empty(2, 2, 2, parallel=False)
    graph.in_graph[:] = False
    ups, downs = graph.upstream_names(), graph.downstream_names()
    for up, down in [("input", "a0.h1<q>"), ("a0.h1", "logits"), ("a0.h0", "m1<in>")]:  # a0.h0 reads nothing
        graph.in_graph[ups.index(up), downs.index(down)] = True
    nodes = to_eap_dict(graph, d_model=8)["nodes"]
    assert {name for name, node in nodes.items() if node["in_graph"]} == {"input", "a0.h1", "logits"}
    assert all("score" not in node for node in nodes.values())  # no node scores: none written


def edited(edit) -> dict:
    """A copy of the hand-written file changed by ``edit(doc)``."""
    doc = json.loads(json.dumps(HAND_WRITTEN))
    edit(doc)
    return doc


def test_bad_files_fail_with_one_line_naming_the_problem():
    with pytest.raises(ValueError, match="no 'cfg' key"):
        from_eap_dict(edited(lambda doc: doc.pop("cfg")))
    with pytest.raises(ValueError, match="edge 'a0.h0->m0' does not exist in a parallel model"):
        from_eap_dict(edited(lambda doc: doc["cfg"].update(parallel_attn_mlp=True)))
    with pytest.raises(ValueError, match=r"1 edges of the model are missing \(first: 'm0->logits'\)"):
        from_eap_dict(edited(lambda doc: doc["edges"].pop("m0->logits")))
    with pytest.raises(ValueError, match="n_key_value_heads=3 does not divide n_heads=2"):
        from_eap_dict(HAND_WRITTEN, n_kv_heads=3)
    with pytest.raises(ValueError, match="node 'input' has no neurons; a neuron-level circuit needs every node's"):
        from_eap_dict(edited(lambda doc: doc["nodes"]["m0"].update(neurons=[True] + [False] * 7)))
    with pytest.raises(ValueError, match="node 'a0.h0' has 2 neurons but cfg.d_model is 8"):
        from_eap_dict(with_neurons(lambda doc: doc["nodes"]["a0.h0"].update(neurons=[True, False])))
    with pytest.raises(ValueError, match="pass d_model="):
        to_eap_dict(Graph.empty(1, 2, 2, parallel=True))


# Neuron-level fields as EAP-IG's to_json writes them for a neuron-level graph: each writer's neurons (kept output
# dimensions) and neurons_scores (NaN: unscored); the logits node has neither. m0 keeps dimensions 1 and 6, a0.h1 none.
NEURONS = {"input": [True] * 8, "a0.h0": [False] * 7 + [True], "a0.h1": [False] * 8,
           "m0": [False, True, False, False, False, False, True, False]}


def with_neurons(edit=lambda doc: None) -> dict:
    """The hand-written file as a neuron-level EAP-IG graph (edges out of a writer with a kept dimension in_graph),
    changed by ``edit(doc)``."""
    def add(doc):
        for name, kept in NEURONS.items():
            doc["nodes"][name].update(in_graph=any(kept), neurons=kept,
                                      neurons_scores=[float("nan") if name == "input" else 0.5 * i for i in range(8)])
        for name, edge in doc["edges"].items():
            edge["in_graph"] = any(NEURONS[name.partition("->")[0]])
        edit(doc)
    return edited(add)


def test_an_eap_ig_neuron_level_file_loads_as_a_neuron_circuit_and_round_trips(tmp_path):
    doc = with_neurons()
    (tmp_path / "eap.json").write_text(json.dumps(doc))  # NaN as EAP-IG's json.dump writes it
    graph = from_eap_json(tmp_path / "eap.json")
    names = graph.upstream_names()
    assert graph.level == "neuron" and graph.d_model == 8
    assert graph.neuron_in_graph.tolist() == [NEURONS[n] for n in names]
    assert graph.n_neurons == 8 + 1 + 2 and graph.n_nodes == 4  # input, a0.h0, m0 and the logits
    assert torch.equal(graph.in_graph, graph.valid & torch.tensor([True, True, False, True])[:, None])
    assert graph.neuron_scores[0].isnan().all() and graph.neuron_scores[3].tolist() == [0.5 * i for i in range(8)]
    assert torch.equal(from_eap_dict(doc, level="edge").in_graph, graph.in_graph)  # the edges say the same
    assert from_eap_dict(doc, level="edge").neuron_in_graph is None

    to_eap_json(graph, tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    for name in names:
        assert again["nodes"][name]["neurons"] == NEURONS[name]
        assert again["nodes"][name]["in_graph"] == any(NEURONS[name])
    assert again["edges"] == doc["edges"] and "neurons" not in again["nodes"]["logits"]
    back = from_eap_json(tmp_path / "again.json")
    assert torch.equal(back.neuron_in_graph, graph.neuron_in_graph) and torch.equal(back.in_graph, graph.in_graph)
    assert torch.equal(back.neuron_scores.nan_to_num(-1), graph.neuron_scores.nan_to_num(-1))
    with pytest.raises(ValueError, match="d_model=16 but the neuron-level circuit has 8"):
        to_eap_dict(graph, d_model=16)


def test_whole_node_neuron_masks_load_at_edge_level_unless_asked():
    """EAP-IG writes neurons for any neuron-capable graph; masks that keep all or nothing of every node say no more
    than the edges, so the file is edge-level unless level='neuron' is passed."""
    doc = with_neurons(lambda d: [d["nodes"][name].update(neurons=[True] * 8) for name in ("a0.h0", "m0")])
    assert from_eap_dict(doc).level == "edge"
    neurons = from_eap_dict(doc, level="neuron")
    assert neurons.level == "neuron" and neurons.n_neurons == 3 * 8
