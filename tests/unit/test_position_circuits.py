"""Position-aware circuits against their definitions: exact position-specific patching with plain TransformerLens
hooks, exact (edge, position) scores, EAP per position against exact on a trained toy, full/empty anchors,
selection, save/load, position labels of the prompt template, and the sum over positions."""

from __future__ import annotations

from functools import partial

import pandas as pd
import pytest
import torch

from circuitflow.circuits import Graph, PairBatch, Tracer, attribute
from circuitflow.circuits.evaluation import faithfulness_of_masks
from circuitflow.circuits.positions import (
    PositionGraph,
    attribute_positions,
    faithfulness_curve,
    most_common_length,
    position_labels,
)
from circuitflow.circuits.tracing import head_outputs, metric_values
from circuitflow.metrics import logit_diff
from circuitflow.models import load_bridge, load_tokenizer
from circuitflow.toy import build_tokenizer
from tests.unit.test_circuits import random_pairs, tiny  # noqa: F401  (the fixture over TINY_ARCHS)


# ---------------------------------------------------------------------------------------------------- model runs
def hooked_patch(tracer, batch: PairBatch, node: int, position: int) -> torch.Tensor:
    """Logits of the clean run with upstream node ``node``'s output at ``position`` replaced by the corrupt run's,
    with plain hooks: the input embedding and an MLP output are overwritten there; a head's z @ W_O difference is
    added to hook_attn_out there."""
    g, a = tracer.shape, tracer.anatomy
    store = {}

    def keep(tensor, hook):
        store["z"] = tensor.detach()

    def overwrite(corrupt, tensor, hook):
        tensor = tensor.clone()
        tensor[:, position] = corrupt[:, position]
        return tensor

    def add_head(layer, head, corrupt_z, tensor, hook):
        W_O = a.layers[layer].W_O
        diff = head_outputs(W_O, corrupt_z)[:, position, head] - head_outputs(W_O, store["z"])[:, position, head]
        tensor = tensor.clone()
        tensor[:, position] += diff
        return tensor

    if node == 0:
        _, corrupt = tracer.capture(batch.corrupt, {"x": a.input_hook})
        hooks = [(a.input_hook, partial(overwrite, corrupt["x"]))]
    else:
        layer, offset = divmod(node - 1, g.n_heads + 1)
        la = a.layers[layer]
        if offset == g.n_heads:
            _, corrupt = tracer.capture(batch.corrupt, {"m": la.hooks["mlp_out"]})
            hooks = [(la.hooks["mlp_out"], partial(overwrite, corrupt["m"]))]
        else:
            _, corrupt = tracer.capture(batch.corrupt, {"z": la.hooks["z"]})
            hooks = [(la.hooks["z"], keep), (la.hooks["attn_out"], partial(add_head, layer, offset, corrupt["z"]))]
    with torch.no_grad(), tracer.bridge.hooks(fwd_hooks=hooks):
        return tracer.bridge(batch.clean)


def test_patching_a_node_at_one_position_equals_cutting_its_edges_there(tiny):
    """The (u → v, p) split is exact: cutting every edge of u at p is u's output patched at p in the model."""
    _, tracer = tiny
    batch = random_pairs(3)
    g, pos = tracer.shape, batch.clean.shape[1]
    reference = tracer.reference(batch, "patching")
    cases = [(0, 2), (g.head_up(0).start + 1, 1), (g.mlp_up(0), 3), (g.head_up(1).start + 2, 0), (g.mlp_up(1), 4)]
    for node, position in cases:
        missing = torch.zeros(1, g.n_up, g.n_down, pos, dtype=torch.bool)
        missing[0, node, :, position] = g.valid[node]
        masked = tracer.run_masked(batch, missing, reference)
        hooked = hooked_patch(tracer, batch, node, position)
        clean, _ = tracer.capture(batch.clean, {})
        assert (hooked - clean).abs().max() > 1e-4  # the patch changes the logits
        torch.testing.assert_close(masked, hooked, rtol=0, atol=1e-6)


def test_exact_scores_equal_one_at_a_time_masked_runs(tiny):
    bridge, tracer = tiny
    batch = random_pairs(2)
    graph = attribute_positions(bridge, [batch], logit_diff, "exact", tracer=tracer, progress=False)
    g, pos = tracer.shape, batch.clean.shape[1]
    clean, _ = tracer.capture(batch.clean, {})
    base = metric_values(logit_diff, clean, clean, batch).mean()
    reference = tracer.reference(batch, "patching")
    pairs = graph.valid.nonzero()
    chosen = pairs[torch.randperm(len(pairs), generator=torch.Generator().manual_seed(2))[:12]]
    for u, d, p in chosen.tolist():
        missing = torch.zeros(1, g.n_up, g.n_down, pos, dtype=torch.bool)
        missing[0, u, d, p] = True
        value = metric_values(logit_diff, tracer.run_masked(batch, missing, reference), clean, batch).mean() - base
        assert float(graph.scores[u, d, p]) == pytest.approx(float(value), abs=1e-9)
    assert graph.scores.abs().max() > 1e-3
    assert not graph.scores[~graph.valid].any()


def test_full_circuit_is_clean_and_empty_circuit_is_corrupt(tiny):
    bridge, tracer = tiny
    batch = random_pairs(3)
    graph = attribute_positions(bridge, [batch], logit_diff, "EAP", tracer=tracer, progress=False)
    clean, _ = tracer.capture(batch.clean, {})
    corrupt, _ = tracer.capture(batch.corrupt, {})
    values, full, empty = faithfulness_of_masks(tracer, graph.in_graph[None], [batch], logit_diff)
    assert full == pytest.approx(float(metric_values(logit_diff, clean, clean, batch).mean()), abs=1e-6)
    assert empty == pytest.approx(float(metric_values(logit_diff, corrupt, clean, batch).mean()), abs=1e-6)
    assert float(values[0]) == pytest.approx(full, abs=1e-9)
    for level in ("edge", "node"):
        curve = faithfulness_curve(bridge, graph, [batch], logit_diff, fractions=[0.1, 1.0], level=level,
                                   tracer=tracer)
        assert curve["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-6)
        assert list(curve["level"]) == [level, level]
    assert graph.n_edges == graph.n_valid  # the curve left the circuit as it was


def test_position_scores_sum_to_the_ordinary_graph(tiny):
    bridge, tracer = tiny
    batches = [random_pairs(3, seed=1), random_pairs(2, seed=2)]
    for method in ("EAP", "EAP-IG-activations", "clean-corrupted"):
        summed = attribute_positions(bridge, batches, logit_diff, method, ig_steps=2, tracer=tracer,
                                     progress=False).to_graph()
        plain = attribute(bridge, batches, logit_diff, method, ig_steps=2, tracer=tracer, progress=False)
        torch.testing.assert_close(summed.scores, plain.scores.double(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(summed.node_scores, plain.node_scores.double(), rtol=1e-9, atol=1e-12)


def test_mixed_token_lengths_are_refused(tiny):
    bridge, tracer = tiny
    with pytest.raises(ValueError, match="one token length"):
        attribute_positions(bridge, [random_pairs(2, seq=5), random_pairs(2, seq=6)], logit_diff, "EAP",
                            tracer=tracer, progress=False)


# ---------------------------------------------------------------------------------------------------- trained toy
def toy_pairs(tokenizer, n: int = 24) -> tuple[PairBatch, pd.DataFrame]:
    """``n`` add prompts of the 12-number toy with counterfactual partners of a different answer."""
    gen = torch.Generator().manual_seed(0)
    xy = [(x, y) for x in range(7) for y in range(7)]
    order = torch.randperm(len(xy), generator=gen).tolist()
    clean = [xy[i] for i in order[:n]]
    corrupt = [next(c for c in reversed(xy) if sum(c) != sum(pair)) for pair in clean]
    ids = lambda pairs: torch.tensor([tokenizer(f"{x}+{y}=")["input_ids"] for x, y in pairs])  # noqa: E731
    answer = lambda pairs: [tokenizer(str(x + y))["input_ids"][0] for x, y in pairs]  # noqa: E731
    labels = torch.tensor([answer(clean), answer(corrupt)]).T
    batch = PairBatch(ids(clean), ids(corrupt), labels, torch.full((n,), 4))
    table = pd.DataFrame(dict(operator="add", op1=[x for x, _ in clean], op2=[y for _, y in clean],
                              prompt=[f"{x}+{y}=" for x, y in clean]))
    return batch, table


def test_eap_per_position_tracks_exact_on_the_trained_toy(toy_handle):
    bridge = load_bridge(toy_handle, device="cpu", dtype="float64")
    tokenizer = load_tokenizer(toy_handle)
    batch, table = toy_pairs(tokenizer)
    labels = position_labels(table, tokenizer)
    assert labels == ["op1", "operator", "op2", "="]
    tracer = Tracer(bridge)
    exact = attribute_positions(bridge, [batch], logit_diff, "exact", positions=labels, tracer=tracer, progress=False)
    eap = attribute_positions(bridge, [batch], logit_diff, "EAP", positions=labels, tracer=tracer, progress=False)
    valid = exact.valid
    pairs = torch.stack([eap.scores[valid], exact.scores[valid]])
    correlation = float(torch.corrcoef(pairs)[0, 1])
    print(f"EAP vs exact per (edge, position) on the trained toy: Pearson {correlation:.3f} over {valid.sum()} pairs")
    assert correlation > 0.8
    # the logits are read at the last position only, so edges into them elsewhere change nothing
    assert exact.scores[:, exact.shape.logits_down, :3].abs().max() < 1e-9


# ---------------------------------------------------------------------------------------------------- no model
def scored_graph(seed: int = 0) -> PositionGraph:
    shape = Graph.empty(2, 2, 2, False)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape.n_up, shape.n_down, 3, generator=gen, dtype=torch.float64)
    return PositionGraph.from_scores(shape, scores, ["op1", "operator", "op2"], dict(method="EAP"))


def test_selection_picks_the_best_edge_and_node_position_pairs():
    graph = scored_graph()
    values = graph.scores.abs().masked_fill(~graph.valid, -1)
    graph.select_topn(7)
    assert graph.n_edges == 7
    assert graph.scores.abs()[graph.in_graph].min() > values[graph.valid & ~graph.in_graph].max()
    graph.select_threshold(1.5)
    assert torch.equal(graph.in_graph, graph.valid & (graph.scores.abs() >= 1.5))
    graph.select_topn(3, level="node")
    nodes = graph.node_scores.abs()
    assert int(graph.node_in_graph.sum()) == 3
    assert nodes[graph.node_in_graph].min() > nodes[~graph.node_in_graph].max()
    assert torch.equal(graph.in_graph, graph.valid & graph.node_in_graph[:, None, :])
    with pytest.raises(ValueError, match="topn or threshold"):
        graph.select("greedy", 3)
    with pytest.raises(ValueError, match="use edge or node"):
        graph.select("topn", 3, level="neuron")


def test_prune_keeps_only_pairs_on_paths():
    graph = scored_graph()
    graph.in_graph[:] = False
    shape = graph.shape
    graph.in_graph[0, shape.down(0, "q").start, 1] = True  # input -> a0.h0 at op1 … but a0.h0 feeds nothing
    graph.in_graph[0, shape.logits_down, 2] = True  # input -> logits: a path
    graph.prune()
    assert graph.n_edges == 1 and bool(graph.in_graph[0, shape.logits_down, 2])


def test_save_load_round_trip_and_json(tmp_path):
    graph = scored_graph().select_topn(4, level="node")
    graph.save(tmp_path / "g.pt")
    back = PositionGraph.load(tmp_path / "g.pt")
    assert torch.equal(back.scores, graph.scores) and torch.equal(back.in_graph, graph.in_graph)
    assert torch.equal(back.node_in_graph, graph.node_in_graph)
    assert back.positions == graph.positions and back.meta == graph.meta
    graph.to_json(tmp_path / "g.json")
    doc = pd.read_json(tmp_path / "g.json", typ="series")
    assert doc["positions"] == ["op1", "operator", "op2"] and len(doc["edges"]) == graph.n_valid
    assert len(doc["nodes_in_graph"]) == 4 and doc["level"] == "node"


class CharTokenizer:
    """One token per character."""

    def __call__(self, text):
        return {"input_ids": [list(t) for t in text] if isinstance(text, list) else list(text)}


def test_position_labels_name_the_template_and_refuse_mixed_lengths():
    tokenizer = build_tokenizer(20)
    prefix = "3+4=7;10+2=12;"
    table = pd.DataFrame(dict(operator="add", op1=[5, 1], op2=[6, 9], prompt=[prefix + "5+6=", prefix + "1+9="]))
    shot = ["op1", "operator", "op2", "=", "answer", "sep"]
    expected = [f"shot{i}.{part}" for i in (1, 2) for part in shot] + ["op1", "operator", "op2", "="]
    assert position_labels(table, tokenizer) == expected
    chars = pd.DataFrame(dict(operator="sub", op1=[12, 3], op2=[7, 1], prompt=["12-7=", "3-1="]))
    with pytest.raises(ValueError, match=r"one token length, got lengths \[4, 5\]"):
        position_labels(chars, CharTokenizer())
    assert position_labels(chars.iloc[:1], CharTokenizer()) == ["op1", "op1", "operator", "op2", "="]
    lengths = pd.DataFrame(dict(prompt_len=[5, 4, 4, 5, 4]))
    assert list(most_common_length(lengths)["prompt_len"]) == [4, 4, 4]
