"""Neuron-level circuits (EAP-IG's ``level="neuron"``): a set of output units (node, dimension); a node with a kept
unit keeps its outgoing edges, which carry the kept dimensions clean and the others intervened. Checked against exact
unit patching written here with plain TransformerBridge hooks (each node's output edited where it is written, not
where it is read), the full/empty circuits, whole-node unit sets against node circuits, top-n and threshold over
``neuron_scores``, the faithfulness curve over unit fractions, and save/load, the readable JSON and EAP-IG's JSON."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch

from circuitflow.circuits import (
    Graph,
    attribute,
    evaluate_graph,
    faithfulness_curve,
    from_eap_json,
    to_eap_json,
)
from circuitflow.metrics import logit_diff
from tests.unit.test_circuits import random_pairs
from tests.unit.test_node_circuits import corrupt_activations, tiny  # noqa: F401  (gpt_neox and llama_gqa, float64)




@pytest.fixture(scope="module")
def scored(tiny):
    bridge, tracer = tiny
    batch = random_pairs(4, seed=11)
    return attribute(bridge, [batch], logit_diff, "EAP", tracer=tracer, progress=False), batch


@torch.no_grad()
def naive_unit_patching(bridge, tracer, batch, cut: torch.Tensor) -> torch.Tensor:
    """Logit difference per example when output dimension i of node u takes its corrupt-run value wherever
    ``cut[u, i]``: the embedding at blocks.0.hook_in, each head's write ``z_h @ W_O[h]`` added into hook_attn_out, each
    MLP at hook_mlp_out."""
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    cut = cut.double()
    names = ["blocks.0.hook_in"] + [f"blocks.{i}.{k}" for i in range(n_layers) for k in ("attn.hook_z", "hook_mlp_out")]
    corrupt = corrupt_activations(bridge, batch.corrupt, names)
    run_z = {}  # this run's z (upstream edits change it)

    def store(into, name, tensor, hook):
        into[name] = tensor.clone()

    def replace(name, rows, tensor, hook):
        return tensor + rows * (corrupt[name] - tensor)

    def add_heads(layer, tensor, hook):
        z_name = f"blocks.{layer}.attn.hook_z"
        change = torch.einsum("bphd,hde->bphe", corrupt[z_name] - run_z[z_name], tracer.anatomy.layers[layer].W_O)
        return tensor + (change * cut[tracer.shape.head_up(layer)]).sum(2)

    hooks = [("blocks.0.hook_in", partial(replace, "blocks.0.hook_in", cut[0]))]
    for layer in range(n_layers):
        z_name = f"blocks.{layer}.attn.hook_z"
        mlp_name = f"blocks.{layer}.hook_mlp_out"
        hooks += [(z_name, partial(store, run_z, z_name)),
                  (f"blocks.{layer}.hook_attn_out", partial(add_heads, layer)),
                  (mlp_name, partial(replace, mlp_name, cut[tracer.shape.mlp_up(layer)]))]
    assert len(corrupt[z_name].shape) == 4 and corrupt[z_name].shape[2] == n_heads
    with bridge.hooks(fwd_hooks=hooks):
        logits = bridge(batch.clean)
    last = logits[torch.arange(len(batch)), batch.lengths - 1]
    return last.gather(1, batch.labels[:, :1])[:, 0] - last.gather(1, batch.labels[:, 1:])[:, 0]


def units(graph: Graph, seed: int) -> torch.Tensor:
    """A random unit mask: about half of each node's dimensions, and two nodes with none."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(graph.n_up, graph.d_model, generator=generator) < 0.5
    mask[torch.randperm(graph.n_up, generator=generator)[:2]] = False
    return mask


def test_full_and_empty_neuron_circuits_are_the_clean_and_corrupt_runs(tiny, scored):
    bridge, tracer = tiny
    graph, batch = scored
    n_units = graph.n_up * graph.d_model
    full = graph.set_neurons(torch.ones(graph.n_up, graph.d_model, dtype=torch.bool))
    assert (full.level, full.n_neurons, full.n_nodes, full.n_units("neuron")) == ("neuron", n_units, graph.n_up + 1,
                                                                                   n_units)
    assert torch.equal(full.in_graph, graph.valid) and not full.cut_units().any()
    clean = naive_unit_patching(bridge, tracer, batch, torch.zeros(graph.n_up, graph.d_model))
    corrupt = naive_unit_patching(bridge, tracer, batch, torch.ones(graph.n_up, graph.d_model))
    assert (clean - corrupt).abs().max() > 1e-3
    torch.testing.assert_close(evaluate_graph(bridge, full, [batch], logit_diff, tracer=tracer), clean,
                               rtol=1e-6, atol=1e-6)
    empty = graph.set_neurons(torch.zeros(graph.n_up, graph.d_model))
    assert not empty.in_graph.any() and empty.cut_units().all() and (empty.n_neurons, empty.n_nodes) == (0, 1)
    torch.testing.assert_close(evaluate_graph(bridge, empty, [batch], logit_diff, tracer=tracer), corrupt,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_neuron_circuit_equals_exact_unit_patching(tiny, scored, seed):
    bridge, tracer = tiny
    graph, batch = scored
    keep = units(graph, seed)
    graph.set_neurons(keep)
    assert torch.equal(graph.in_graph, graph.valid & keep.any(1)[:, None]) and torch.equal(graph.cut_units(), ~keep)
    expected = naive_unit_patching(bridge, tracer, batch, ~keep)
    nodes_only = naive_unit_patching(bridge, tracer, batch, ~keep.any(1, keepdim=True).expand_as(keep))
    assert (expected - nodes_only).abs().max() > 1e-3  # the dimensions matter, not only the nodes
    torch.testing.assert_close(evaluate_graph(bridge, graph, [batch], logit_diff, tracer=tracer), expected,
                               rtol=1e-6, atol=1e-6)
    graph.in_graph[0, -1] = not graph.in_graph[0, -1]  # an edit that breaks the neuron circuit is refused
    with pytest.raises(ValueError, match="in_graph no longer matches neuron_in_graph .* call graph.set_neurons"):
        evaluate_graph(bridge, graph, [batch], logit_diff, tracer=tracer)


def test_whole_nodes_of_units_are_the_node_circuit(tiny, scored):
    bridge, tracer = tiny
    graph, batch = scored
    nodes = torch.rand(graph.n_up, generator=torch.Generator().manual_seed(3)) < 0.5
    node_metric = evaluate_graph(bridge, graph.set_nodes(nodes), [batch], logit_diff, tracer=tracer)
    node_edges = graph.in_graph.clone()
    graph.set_neurons(nodes[:, None].expand(graph.n_up, graph.d_model))
    assert graph.node_in_graph is None and torch.equal(graph.in_graph, node_edges)
    assert graph.n_neurons == int(nodes.sum()) * graph.d_model == graph.set_nodes(nodes).n_neurons
    neuron_metric = evaluate_graph(bridge, graph.set_neurons(nodes[:, None].expand(-1, graph.d_model)), [batch],
                                   logit_diff, tracer=tracer)
    torch.testing.assert_close(neuron_metric, node_metric, rtol=1e-9, atol=1e-9)


def test_neuron_topn_and_threshold_pick_the_units_with_the_largest_scores(scored):
    graph, _ = scored
    flat = graph.neuron_scores.flatten()
    order = sorted(range(len(flat)), key=lambda i: -abs(float(flat[i])))
    graph.select("topn", 9, level="neuron")
    assert graph.neuron_in_graph.flatten().nonzero().flatten().tolist() == sorted(order[:9])
    assert graph.level == "neuron" and graph.n_neurons == 9
    assert torch.equal(graph.in_graph, graph.valid & graph.neuron_in_graph.any(1)[:, None])
    assert graph.meta["selection"] == dict(method="topn", n=9, absolute=True, level="neuron")
    signed = max(range(len(flat)), key=lambda i: float(flat[i]))
    assert graph.select_topn(1, absolute=False, level="neuron").neuron_in_graph.flatten().nonzero().flatten().tolist() \
        == [signed]
    graph.select("threshold", abs(float(flat[order[19]])), level="neuron")
    assert graph.neuron_in_graph.flatten().nonzero().flatten().tolist() == sorted(order[:20])
    assert graph.select("topn", 10 ** 9, level="neuron").n_neurons == len(flat)
    with pytest.raises(ValueError, match="^greedy selection is edge-level .* at level='neuron'$"):
        graph.select("greedy", 3, level="neuron")
    with pytest.raises(ValueError, match="^prune works on edge-level circuits; a neuron-level circuit"):
        graph.prune()
    with pytest.raises(ValueError, match=r"^neuron mask has shape \(3, 2\); a neuron-level circuit needs \[\d+, 32\]"):
        graph.set_neurons(torch.ones(3, 2))
    with pytest.raises(ValueError, match="^unknown circuit level 'units': use edge, node, neuron or mlp-neuron$"):
        graph.select("topn", 3, level="units")
    graph.select("topn", 5, level="node")  # other levels leave the neuron level
    assert graph.level == "node" and graph.neuron_in_graph is None
    graph.select("topn", 5, level="neuron").select("topn", 5)
    assert graph.level == "edge" and graph.neuron_in_graph is None and graph.n_edges == 5
    graph.select("topn", 5, level="neuron").select("greedy", 4)
    assert graph.level == "edge" and graph.neuron_in_graph is None and graph.n_edges == 4


def test_neuron_selection_needs_neuron_scores_and_counting_needs_d_model():
    graph = Graph.empty(1, 2, 2, parallel=False)  # e.g. exact scores: no neuron_scores
    with pytest.raises(ValueError, match="^neuron-level selection needs graph.neuron_scores.*score the graph with EAP"):
        graph.select("topn", 3, level="neuron")
    with pytest.raises(ValueError, match=r"^n_neurons needs d_model.*graph.meta\['d_model'\] = bridge.cfg.d_model$"):
        _ = graph.n_neurons
    graph.meta["d_model"] = 8
    assert graph.n_neurons == graph.n_up * 8 and graph.cut_units() is None  # every writer is in the full circuit
    assert graph.count_neurons(d_model=4) == graph.n_up * 4


def test_neuron_faithfulness_curve_counts_units(tiny, scored):
    bridge, tracer = tiny
    graph, batch = scored
    graph.select("topn", 7)
    before = graph.in_graph.clone()
    n_units = graph.n_up * graph.d_model
    curve = faithfulness_curve(bridge, graph, [batch], logit_diff, fractions=(0.0001, 0.1, 1.0), level="neuron",
                               tracer=tracer)
    assert graph.level == "edge" and torch.equal(graph.in_graph, before) and graph.meta["selection"]["n"] == 7
    assert curve["n_neurons"].tolist() == [1, math.ceil(0.1 * n_units), n_units]
    assert curve["level"].eq("neuron").all()
    clean = naive_unit_patching(bridge, tracer, batch, torch.zeros(graph.n_up, graph.d_model)).mean()
    corrupt = naive_unit_patching(bridge, tracer, batch, torch.ones(graph.n_up, graph.d_model)).mean()
    assert curve["metric_full"].iloc[0] == pytest.approx(float(clean), abs=1e-6)
    assert curve["metric_empty"].iloc[0] == pytest.approx(float(corrupt), abs=1e-6)
    assert curve["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-9)
    tenth = graph.select_topn(math.ceil(0.1 * n_units), level="neuron")
    value = float(evaluate_graph(bridge, tenth, [batch], logit_diff, tracer=tracer).mean())
    assert curve["metric"].iloc[1] == pytest.approx(value, abs=1e-9)
    assert (curve["n_edges"].iloc[1], curve["n_nodes"].iloc[1]) == (tenth.n_edges, tenth.n_nodes)
    nothing = float(evaluate_graph(bridge, graph.select_threshold(math.inf, level="neuron"), [batch], logit_diff,
                                   tracer=tracer).mean())
    full, empty = curve["metric_full"].iloc[0], curve["metric_empty"].iloc[0]
    f_nothing = (nothing - empty) / (full - empty)
    assert f_nothing == pytest.approx(0, abs=1e-9)  # the empty circuit is the f = 0 anchor

    edges = faithfulness_curve(bridge, graph, [batch], logit_diff, fractions=(0.05, 1.0), tracer=tracer)
    writers = graph.select_topn(int(edges["n_edges"].iloc[0])).in_graph.any(1).sum()
    assert edges["n_neurons"].tolist() == [int(writers) * graph.d_model, n_units]  # d_model per writer in the circuit


def test_neuron_circuit_survives_save_load_and_json(tmp_path, scored):
    graph, _ = scored
    graph.set_neurons(units(graph, 5))
    graph.save(tmp_path / "g.pt")
    loaded = Graph.load(tmp_path / "g.pt")
    assert loaded.level == "neuron" and torch.equal(loaded.neuron_in_graph, graph.neuron_in_graph)
    assert torch.equal(loaded.in_graph, graph.in_graph) and torch.equal(loaded.neuron_scores, graph.neuron_scores)

    graph.to_json(tmp_path / "g.json")
    readable = json.loads((tmp_path / "g.json").read_text())
    assert readable["level"] == "neuron" and readable["n_neurons_in_graph"] == graph.n_neurons
    decoded = torch.zeros_like(graph.neuron_in_graph)
    names = graph.upstream_names()
    for name, ranges in readable["neurons_in_graph"].items():
        for start, stop in ranges:
            decoded[names.index(name), start:stop] = True
    assert torch.equal(decoded, graph.neuron_in_graph)
    assert len(readable["neurons_in_graph"]) == int(graph.neuron_in_graph.any(1).sum())

    to_eap_json(graph, tmp_path / "eap.json")  # d_model from the neuron mask
    doc = json.loads((tmp_path / "eap.json").read_text())
    assert doc["cfg"]["d_model"] == graph.d_model
    assert [doc["nodes"][n]["neurons"] for n in names] == graph.neuron_in_graph.tolist()
    assert [doc["nodes"][n]["in_graph"] for n in names] == graph.neuron_in_graph.any(1).tolist()
    back = from_eap_json(tmp_path / "eap.json")
    assert back.level == "neuron" and torch.equal(back.neuron_in_graph, graph.neuron_in_graph)
    assert torch.equal(back.in_graph, graph.in_graph)
    torch.testing.assert_close(back.neuron_scores, graph.neuron_scores.double(), rtol=0, atol=0)
