"""MLP-neuron-level circuits (the arithmetic paper's unit): the input and heads stay whole nodes, each MLP is split into
its hidden neurons (``hook_mlp_post``). Checked against exact patching written here with plain TransformerBridge hooks
(the cut hidden neurons at hook_mlp_post and the cut heads at hook_z take the corrupt run's activations), the
full/empty circuits, MLPs with all or none of their neurons against node circuits (patching and mean), the hidden
scores against the MLP node scores and against finite differences of the masked run, selection over the units, the
faithfulness curve, save/load and the readable JSON, and EAP-IG's JSON refusing the level."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from circuitflow.circuits import (
    Graph,
    attribute,
    evaluate_graph,
    evaluate_masks,
    faithfulness_curve,
    from_eap_json,
    to_eap_json,
)
from circuitflow.metrics import logit_diff
from tests.unit.test_circuits import random_pairs
from tests.unit.test_masked_runs import tolerances
from tests.unit.test_node_circuits import corrupt_activations, tiny  # noqa: F401  (gpt_neox, llama_gqa)


@pytest.fixture(scope="module")
def scored(tiny):  # noqa: F811
    bridge, tracer = tiny
    batch = random_pairs(4, seed=11)
    return attribute(bridge, [batch], logit_diff, "EAP", hidden=True, tracer=tracer, progress=False), batch


@torch.no_grad()
def naive_hidden_patching(bridge, batch, nodes: torch.Tensor, hidden: torch.Tensor, zero: bool = False
                          ) -> torch.Tensor:
    """Logit difference per example when the embedding (unless ``nodes[0]``), the heads h of layer l outside
    ``nodes`` (at hook_z) and the hidden neurons outside ``hidden`` ``[n_layers, d_mlp]`` (at hook_mlp_post) take
    their corrupt-run values (``zero``: 0)."""
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    roles = ("attn.hook_z", "mlp.hook_post")
    names = ["blocks.0.hook_in"] + [f"blocks.{i}.{k}" for i in range(n_layers) for k in roles]
    corrupt = corrupt_activations(bridge, batch.corrupt, names)

    def replace(name, cut, tensor, hook):
        return torch.where(cut.to(tensor.device), 0 if zero else corrupt[name], tensor)

    hooks = [("blocks.0.hook_in", partial(replace, names[0], ~nodes[0]))]
    for layer in range(n_layers):
        heads = ~nodes[1 + layer * (n_heads + 1) : 1 + layer * (n_heads + 1) + n_heads]
        hooks += [(f"blocks.{layer}.attn.hook_z", partial(replace, f"blocks.{layer}.attn.hook_z", heads[:, None])),
                  (f"blocks.{layer}.mlp.hook_post", partial(replace, f"blocks.{layer}.mlp.hook_post", ~hidden[layer]))]
    with bridge.hooks(fwd_hooks=hooks):
        logits = bridge(batch.clean)
    last = logits[torch.arange(len(batch)), batch.lengths - 1]
    return last.gather(1, batch.labels[:, :1])[:, 0] - last.gather(1, batch.labels[:, 1:])[:, 0]


def random_circuit(graph: Graph, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """About half the heads and half of each MLP's neurons, but the input and all of the last MLP's neurons (a cut input
    would make every later activation the corrupt run's)."""
    generator = torch.Generator().manual_seed(seed)
    nodes = torch.rand(graph.n_up, generator=generator) < 0.5
    hidden = torch.rand(graph.hidden_scores.shape, generator=generator) < 0.5
    nodes[0], hidden[-1] = True, True
    return nodes, hidden


def test_full_and_empty_mlp_neuron_circuits_are_the_clean_and_corrupt_runs(tiny, scored):  # noqa: F811
    bridge, tracer = tiny
    graph, batch = scored
    n_layers, d_mlp = graph.hidden_scores.shape
    assert d_mlp == bridge.cfg.d_mlp and n_layers == graph.n_layers
    everything = torch.ones(graph.n_up, dtype=torch.bool), torch.ones(n_layers, d_mlp, dtype=torch.bool)
    full = graph.set_mlp_neurons(*everything)
    assert (full.level, full.n_neurons, full.n_nodes) == ("mlp-neuron", n_layers * d_mlp, graph.n_up + 1)
    assert torch.equal(full.in_graph, graph.valid) and not full.hidden_cut().any()
    clean = naive_hidden_patching(bridge, batch, *everything)
    corrupt = naive_hidden_patching(bridge, batch, ~everything[0], ~everything[1])
    assert (clean - corrupt).abs().max() > 1e-3
    torch.testing.assert_close(evaluate_graph(bridge, full, [batch], logit_diff, tracer=tracer), clean,
                               rtol=1e-6, atol=1e-6)
    empty = graph.set_mlp_neurons(~everything[0], ~everything[1])
    assert not empty.in_graph.any() and empty.hidden_cut().all() and (empty.n_neurons, empty.n_nodes) == (0, 1)
    torch.testing.assert_close(evaluate_graph(bridge, empty, [batch], logit_diff, tracer=tracer), corrupt,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_mlp_neuron_circuit_equals_exact_hidden_patching(tiny, scored, seed):  # noqa: F811
    bridge, tracer = tiny
    graph, batch = scored
    nodes, hidden = random_circuit(graph, seed)
    graph.set_mlp_neurons(nodes, hidden)
    is_mlp = graph.is_mlp()
    assert torch.equal(graph.node_in_graph[~is_mlp], nodes[~is_mlp])
    assert torch.equal(graph.node_in_graph[is_mlp], hidden.any(1)) and torch.equal(graph.hidden_cut(), ~hidden)
    expected = naive_hidden_patching(bridge, batch, nodes, hidden)
    whole_mlps = naive_hidden_patching(bridge, batch, nodes, hidden.any(1, keepdim=True).expand_as(hidden))
    assert (expected - whole_mlps).abs().max() > 1e-3  # the hidden neurons matter, not only the MLPs
    torch.testing.assert_close(evaluate_graph(bridge, graph, [batch], logit_diff, tracer=tracer), expected,
                               rtol=1e-6, atol=1e-6)


def test_zero_ablation_keeps_the_mlp_bias(tiny, scored):  # noqa: F811
    """Zero ablation zeroes hidden neurons at hook_mlp_post (b_out stays; the tiny models' biases are 0, so the node
    circuit agrees here)."""
    bridge, tracer = tiny
    graph, batch = scored
    nodes, hidden = random_circuit(graph, 3)
    for keep in (hidden, torch.zeros_like(hidden)):
        expected = naive_hidden_patching(bridge, batch, nodes, keep, zero=True)
        graph.set_mlp_neurons(nodes, keep)
        torch.testing.assert_close(evaluate_graph(bridge, graph, [batch], logit_diff, "zero", tracer=tracer), expected,
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("intervention", ["patching", "mean", "mean-positional"])
def test_mlps_with_all_or_none_of_their_neurons_are_the_node_circuit(tiny, scored, intervention):  # noqa: F811
    bridge, tracer = tiny
    graph, batch = scored
    data, positional = [random_pairs(6, seed=9).clean, random_pairs(6, seed=10).clean], intervention != "mean"
    means = dict(means=tracer.means(data, positional), hidden_means=tracer.hidden_means(data, positional))
    nodes = random_circuit(graph, 2)[0]
    nodes[graph.mlp_up(0)], nodes[graph.mlp_up(graph.n_layers - 1)] = False, True
    hidden = nodes[graph.is_mlp()][:, None].expand_as(graph.hidden_scores)
    as_nodes = evaluate_graph(bridge, graph.set_nodes(nodes), [batch], logit_diff, intervention, tracer=tracer, **means)
    as_hidden = evaluate_graph(bridge, graph.set_mlp_neurons(nodes, hidden), [batch], logit_diff, intervention,
                               tracer=tracer, **means)
    assert graph.level == "mlp-neuron"
    torch.testing.assert_close(as_hidden, as_nodes, rtol=1e-5, atol=1e-6)  # means are float32


@pytest.mark.parametrize("method", ["EAP", "EAP-IG-inputs", "EAP-IG-activations"])
@pytest.mark.parametrize("intervention", ["patching", "mean"])
def test_hidden_scores_sum_to_the_mlp_node_scores(tiny, method, intervention):  # noqa: F811
    bridge, tracer = tiny
    batches = [random_pairs(3, seed=5), random_pairs(2, seed=6)]
    data = [random_pairs(6, seed=9).clean]
    means = dict(means=tracer.means(data, positional=False), hidden_means=tracer.hidden_means(data, positional=False))
    graph = attribute(bridge, batches, logit_diff, method, intervention, ig_steps=2, hidden=True, tracer=tracer,
                      progress=False, **means)
    plain = attribute(bridge, batches, logit_diff, method, intervention, ig_steps=2, tracer=tracer, progress=False,
                      means=means["means"])
    assert plain.hidden_scores is None and torch.equal(plain.scores, graph.scores)
    mlp_scores = graph.node_scores[graph.is_mlp()]
    assert mlp_scores.abs().min() > 1e-6
    torch.testing.assert_close(graph.hidden_scores.sum(1), mlp_scores, rtol=1e-4, atol=1e-6)


def test_hidden_scores_equal_finite_differences_of_the_gate(tiny):  # noqa: F811
    bridge, tracer = tiny
    eps, rtol, atol = tolerances(bridge)
    batch = random_pairs(3)
    g, a = tracer.shape, tracer.anatomy
    clean_logits, clean_up = tracer.outputs(batch.clean)
    reference, hidden_reference = tracer.reference(batch, "patching"), tracer.hidden_reference(batch, "patching")
    scores = torch.zeros(g.n_up, g.n_down, dtype=torch.float64)
    hidden = torch.zeros(a.n_layers, a.d_mlp, dtype=torch.float64)
    tracer.gradient_pass(batch, clean_logits, logit_diff, reference - clean_up, scores, hidden_scores=hidden,
                         delta_post=hidden_reference - tracer.hidden(batch.clean))
    chosen = torch.randperm(hidden.numel(), generator=torch.Generator().manual_seed(0))[:12]
    gate = torch.zeros(len(chosen), hidden.numel(), dtype=torch.float64)
    gate[torch.arange(len(chosen)), chosen] = eps
    gate = torch.cat([gate, -gate]).view(-1, a.n_layers, a.d_mlp)
    missing = torch.zeros(len(gate), g.n_up, g.n_down, dtype=torch.bool)
    logits = tracer.run_masked(batch, missing, reference, hidden_cut=gate, hidden_reference=hidden_reference)
    values = logit_diff(logits, clean_logits.repeat(len(gate), 1, 1), batch.lengths.repeat(len(gate)),
                        batch.labels.repeat(len(gate), 1)).view(len(gate), -1).sum(1)
    difference = (values[: len(chosen)] - values[len(chosen) :]) / (2 * eps)
    assert hidden.flatten()[chosen].abs().max() > 1e-4
    torch.testing.assert_close(difference, hidden.flatten()[chosen], rtol=rtol, atol=atol)


def test_mlp_neuron_topn_and_threshold_rank_heads_input_and_hidden_neurons_together(scored):
    graph, _ = scored
    is_mlp = graph.is_mlp()
    n_units = int((~is_mlp).sum()) + graph.hidden_scores.numel()
    assert graph.n_units("mlp-neuron") == n_units
    ranked = torch.cat([graph.node_scores[~is_mlp], graph.hidden_scores.flatten()]).abs()
    graph.select("topn", 7, level="mlp-neuron")
    kept = torch.cat([graph.node_in_graph[~is_mlp], graph.hidden_in_graph.flatten()])
    assert graph.level == "mlp-neuron" and int(kept.sum()) == 7 and graph.meta["selection"]["level"] == "mlp-neuron"
    assert ranked[kept].min() >= ranked[~kept].max()
    threshold = float(ranked.sort(descending=True).values[11])
    graph.select("threshold", threshold, level="mlp-neuron")
    assert int(torch.cat([graph.node_in_graph[~is_mlp], graph.hidden_in_graph.flatten()]).sum()) == 12
    graph.select("greedy", 4)
    assert graph.level == "edge" and graph.hidden_in_graph is None and graph.node_in_graph is None
    graph.select("topn", 7, level="mlp-neuron").select("topn", 3, level="node")
    assert graph.level == "node" and graph.hidden_in_graph is None
    with pytest.raises(ValueError, match="needs graph.hidden_scores: score the graph with attribute\\(..., hidden"):
        _without_hidden(graph).select("topn", 1, level="mlp-neuron")


def _without_hidden(graph: Graph) -> Graph:
    """A copy of ``graph`` without hidden scores."""
    copy = Graph.empty(graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.parallel)
    copy.scores, copy.node_scores = graph.scores, graph.node_scores
    return copy


def test_mlp_neuron_circuit_edits_and_exact_scores_are_refused(tiny, scored):  # noqa: F811
    bridge, tracer = tiny
    graph, batch = scored
    graph.set_mlp_neurons(*random_circuit(graph, 0))
    means = tracer.means([batch.clean], positional=False)
    with pytest.raises(ValueError, match=r"^intervention 'mean' needs hidden_means \(Tracer.hidden_means on an"):
        evaluate_graph(bridge, graph, [batch], logit_diff, "mean", means=means, tracer=tracer)
    graph.in_graph[0, -1] = ~graph.in_graph[0, -1]
    with pytest.raises(ValueError, match="no longer matches node_in_graph and hidden_in_graph .*set_mlp_neurons"):
        graph.circuit_edges()
    with pytest.raises(ValueError, match="gradient scores: use EAP or EAP-IG, not exact"):
        attribute(bridge, [batch], logit_diff, "exact", hidden=True, tracer=tracer, progress=False)
    with pytest.raises(ValueError, match=r"need \[\d+\] \(upstream nodes\) and \[\d+, \d+\] \(hidden neurons per MLP"):
        graph.set_mlp_neurons(torch.ones(graph.n_up, dtype=torch.bool), torch.ones(graph.n_layers, 3))
    with pytest.raises(ValueError, match=r"need \[\d+\] \(upstream nodes\) and \[\d+, d_mlp\]"):
        _without_hidden(graph).set_mlp_neurons(torch.ones(3, dtype=torch.bool), graph.hidden_scores > 0)
    with pytest.raises(ValueError, match=r"^hidden_cut has shape \(1, \d+, 3\); the model needs \[n_masks, \d+, \d+\]"):
        evaluate_masks(tracer, graph.valid[None], [batch], logit_diff, hidden_cut=torch.ones(1, graph.n_layers, 3))


def test_faithfulness_curve_over_mlp_neuron_fractions(tiny, scored):  # noqa: F811
    bridge, tracer = tiny
    graph, batch = scored
    fractions = (0.01, 0.1, 0.5, 1.0)
    curve = faithfulness_curve(bridge, graph.select("topn", 5), [batch], logit_diff, fractions=fractions,
                               level="mlp-neuron", tracer=tracer)
    assert graph.level == "edge" and graph.n_edges == 5  # left as it was
    total = graph.n_units("mlp-neuron")
    assert list(curve["level"]) == ["mlp-neuron"] * 4 and curve["faithfulness"].iloc[-1] == pytest.approx(1, abs=1e-9)
    graph.select("topn", -(-total // 10), level="mlp-neuron")
    assert curve["n_neurons"].iloc[1] == graph.n_neurons and curve["n_nodes"].iloc[1] == graph.n_nodes
    metric = float(evaluate_graph(bridge, graph, [batch], logit_diff, tracer=tracer).mean())
    assert curve["metric"].iloc[1] == pytest.approx(metric, abs=1e-9)
    empty = float(naive_hidden_patching(bridge, batch, torch.zeros(graph.n_up, dtype=torch.bool),
                                        torch.zeros_like(graph.hidden_in_graph)).mean())
    assert curve["metric_empty"].iloc[0] == pytest.approx(empty, abs=1e-9)


def test_mlp_neuron_circuits_save_load_and_json(scored, tmp_path):
    graph, _ = scored
    nodes, hidden = random_circuit(graph, 1)
    graph.set_mlp_neurons(nodes, hidden)
    graph.save(tmp_path / "g.pt")
    back = Graph.load(tmp_path / "g.pt")
    assert back.level == "mlp-neuron" and torch.equal(back.hidden_in_graph, graph.hidden_in_graph)
    assert torch.equal(back.hidden_scores, graph.hidden_scores) and torch.equal(back.in_graph, graph.in_graph)
    graph.to_json(tmp_path / "g.json")
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["level"] == "mlp-neuron" and doc["n_neurons_in_graph"] == int(hidden.sum())
    last = graph.upstream_names()[graph.mlp_up(graph.n_layers - 1)]
    assert doc["hidden_in_graph"][last] == [[0, hidden.shape[1]]]
    first = graph.upstream_names()[graph.mlp_up(0)]
    assert sum(stop - start for start, stop in doc["hidden_in_graph"][first]) == int(hidden[0].sum())
    with pytest.raises(ValueError, match="EAP-IG's JSON has no MLP hidden-neuron units; select the circuit at level"):
        to_eap_json(graph, tmp_path / "eap.json", d_model=8)
    to_eap_json(graph.select("topn", 3), tmp_path / "eap.json", d_model=8)
    with pytest.raises(ValueError, match="eap.json: EAP-IG's JSON has no MLP hidden-neuron units"):
        from_eap_json(tmp_path / "eap.json", level="mlp-neuron")
