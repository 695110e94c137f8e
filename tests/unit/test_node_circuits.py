"""Node-level circuits (EAP-IG's ``level="node"``): a set of upstream nodes whose outgoing edges all stay, every
other node patched. Checked against exact node patching written here with plain TransformerBridge hooks, the
full/empty circuits, node top-n, the faithfulness curve over node fractions, and save/load and EAP-IG JSON."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch

from circuitflow.circuits import (
    Graph,
    Tracer,
    area_scores,
    attribute,
    evaluate_graph,
    faithfulness_curve,
    from_eap_json,
    to_eap_json,
)
from circuitflow.circuits.interop import from_eap_dict, to_eap_dict
from circuitflow.metrics import logit_diff
from circuitflow.models import ModelHandle, load_bridge
from tests.conftest import save_tiny_model
from tests.unit.test_circuits import assert_full_is_clean_and_empty_is_corrupt, random_pairs


@pytest.fixture(scope="module", params=["gpt_neox", "llama_gqa"])  # parallel blocks; sequential with GQA
def tiny(request, tmp_path_factory):
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    bridge = load_bridge(ModelHandle("tiny", str(path)), device="cpu", dtype="float64")
    bridge.arch = request.param  # for test_masked_runs.tolerances
    return bridge, Tracer(bridge)


@pytest.fixture(scope="module")
def scored(tiny):
    bridge, tracer = tiny
    batch = random_pairs(4, seed=11)
    return attribute(bridge, [batch], logit_diff, "EAP", tracer=tracer, progress=False), batch


def corrupt_activations(bridge, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The activations at hooks ``names`` of a plain run on ``tokens``."""
    store = {}

    def keep(name, tensor, hook):
        store[name] = tensor.clone()

    with bridge.hooks(fwd_hooks=[(name, partial(keep, name)) for name in names]):
        bridge(tokens)
    return store


def naive_node_patching(bridge, batch, keep: list[str]) -> torch.Tensor:
    """Logit difference per example when every node not named in ``keep`` outputs its corrupt-run value: the
    embedding at blocks.0.hook_in, each head's slice of hook_z, each MLP's hook_mlp_out."""
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    names = ["blocks.0.hook_in"] + [f"blocks.{i}.{k}" for i in range(n_layers) for k in ("attn.hook_z", "hook_mlp_out")]
    corrupt = corrupt_activations(bridge, batch.corrupt, names)

    def replace(name, cut, tensor, hook):
        tensor = tensor.clone()
        tensor[..., cut, :] = corrupt[name][..., cut, :]
        return tensor

    def replace_all(name, tensor, hook):
        return corrupt[name]

    hooks = [] if "input" in keep else [("blocks.0.hook_in", partial(replace_all, "blocks.0.hook_in"))]
    for layer in range(n_layers):
        cut = [h for h in range(n_heads) if f"a{layer}.h{h}" not in keep]
        if cut:
            name = f"blocks.{layer}.attn.hook_z"
            hooks.append((name, partial(replace, name, cut)))
        if f"m{layer}" not in keep:
            name = f"blocks.{layer}.hook_mlp_out"
            hooks.append((name, partial(replace_all, name)))
    with bridge.hooks(fwd_hooks=hooks):
        logits = bridge(batch.clean)
    last = logits[torch.arange(len(batch)), batch.lengths - 1]
    return last.gather(1, batch.labels[:, :1])[:, 0] - last.gather(1, batch.labels[:, 1:])[:, 0]


def test_full_and_empty_node_circuits_are_the_clean_and_corrupt_runs(tiny):
    _, tracer = tiny
    g = tracer.shape
    full = Graph.empty(g.n_layers, g.n_heads, g.n_kv_heads, g.parallel).set_nodes(torch.ones(g.n_up, dtype=torch.bool))
    empty = Graph.empty(g.n_layers, g.n_heads, g.n_kv_heads, g.parallel).set_nodes(torch.zeros(g.n_up))
    assert torch.equal(full.in_graph, g.valid) and not empty.in_graph.any()
    assert (full.level, full.n_nodes, empty.n_nodes) == ("node", g.n_up + 1, 1)
    assert_full_is_clean_and_empty_is_corrupt(tracer, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_node_circuit_equals_exact_node_patching(tiny, scored, seed):
    bridge, tracer = tiny
    graph, batch = scored
    keep = torch.rand(graph.n_up, generator=torch.Generator().manual_seed(seed)) < 0.5
    graph.set_nodes(keep)
    names = [n for n, k in zip(graph.upstream_names(), keep.tolist(), strict=True) if k]
    expected = naive_node_patching(bridge, batch, names)
    clean = naive_node_patching(bridge, batch, graph.upstream_names())
    assert (expected - clean).abs().max() > 1e-3  # the patch matters
    torch.testing.assert_close(evaluate_graph(bridge, graph, [batch], logit_diff, tracer=tracer), expected,
                               rtol=1e-6, atol=1e-6)
    graph.in_graph[0, -1] = not graph.in_graph[0, -1]  # an edit that breaks the node circuit is refused
    with pytest.raises(ValueError, match="in_graph no longer matches node_in_graph"):
        evaluate_graph(bridge, graph, [batch], logit_diff, tracer=tracer)


def test_node_topn_and_threshold_pick_the_nodes_with_the_largest_scores(scored):
    graph, _ = scored
    order = sorted(range(graph.n_up), key=lambda u: -abs(float(graph.node_scores[u])))
    graph.select("topn", 3, level="node")
    assert graph.node_in_graph.nonzero().flatten().tolist() == sorted(order[:3])
    assert torch.equal(graph.in_graph, graph.valid & graph.node_in_graph[:, None])
    assert graph.meta["selection"] == dict(method="topn", n=3, absolute=True, level="node")
    signed = max(range(graph.n_up), key=lambda u: float(graph.node_scores[u]))
    assert graph.select_topn(1, absolute=False, level="node").node_in_graph.nonzero().flatten().tolist() == [signed]
    cut = abs(float(graph.node_scores[order[4]]))
    graph.select("threshold", cut, level="node")
    assert graph.node_in_graph.nonzero().flatten().tolist() == sorted(order[:5])
    with pytest.raises(ValueError, match="greedy selection is edge-level"):
        graph.select("greedy", 3, level="node")
    with pytest.raises(ValueError, match="prune works on edge-level"):
        graph.prune()
    graph.select("topn", 5)  # back to edges
    assert graph.level == "edge" and graph.node_in_graph is None and graph.n_edges == 5


def test_node_faithfulness_curve_counts_nodes(tiny, scored):
    bridge, tracer = tiny
    graph, batch = scored
    graph.select("topn", 7)
    before = graph.in_graph.clone()
    curve = faithfulness_curve(bridge, graph, [batch], logit_diff, fractions=(0.0001, 0.5, 1.0), level="node",
                               tracer=tracer)
    assert graph.level == "edge" and torch.equal(graph.in_graph, before) and graph.meta["selection"]["n"] == 7
    assert curve["n_nodes"].tolist() == [2, math.ceil(graph.n_up / 2) + 1, graph.n_up + 1]
    assert curve["level"].eq("node").all() and curve["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-9)
    half = graph.select_topn(math.ceil(graph.n_up / 2), level="node")
    value = float(evaluate_graph(bridge, half, [batch], logit_diff, tracer=tracer).mean())
    assert curve["metric"].iloc[1] == pytest.approx(value, abs=1e-9)
    assert curve["n_edges"].iloc[1] == half.n_edges
    areas = area_scores(curve)
    assert math.isfinite(areas["cpr"]) and areas["cmd"] >= 0


def test_node_circuit_survives_save_load_and_eap_json(tmp_path, scored):
    graph, _ = scored
    graph.select_topn(4, level="node")
    graph.save(tmp_path / "g.pt")
    loaded = Graph.load(tmp_path / "g.pt")
    assert loaded.level == "node" and torch.equal(loaded.node_in_graph, graph.node_in_graph)
    assert torch.equal(loaded.in_graph, graph.in_graph)
    graph.to_json(tmp_path / "g.json")
    readable = json.loads((tmp_path / "g.json").read_text())
    names = graph.upstream_names()
    assert readable["level"] == "node"
    assert readable["nodes_in_graph"] == [names[u] for u in graph.node_in_graph.nonzero().flatten().tolist()]

    to_eap_json(graph, tmp_path / "eap.json", d_model=32)
    doc = json.loads((tmp_path / "eap.json").read_text())
    assert [doc["nodes"][n]["in_graph"] for n in names] == graph.node_in_graph.tolist()
    for name, edge in doc["edges"].items():
        assert edge["in_graph"] == doc["nodes"][name.partition("->")[0]]["in_graph"], name
    back = from_eap_json(tmp_path / "eap.json")
    assert back.level == "node" and torch.equal(back.node_in_graph, graph.node_in_graph)
    assert torch.equal(back.in_graph, graph.in_graph)
    doc.pop("meta")  # as EAP-IG writes it: the level is the caller's to say
    assert from_eap_dict(doc).level == "edge"
    assert torch.equal(from_eap_dict(doc, level="node").node_in_graph, graph.node_in_graph)
    again = to_eap_dict(from_eap_dict(doc, level="node"), d_model=32)
    assert again["edges"].keys() == doc["edges"].keys()
    assert all(again["edges"][k]["in_graph"] == e["in_graph"] for k, e in doc["edges"].items())
    del doc["nodes"]["m0"]["in_graph"]
    with pytest.raises(ValueError, match="node 'm0' has no in_graph"):
        from_eap_dict(doc, level="node")
