"""The circuit engine against its definitions: brute-force first-order scores, exact edge patching, the full and
empty circuits, batch splitting, grouped-query attention, and TransformerLens 4.3's own attribution patching."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from circuitflow.circuits import Graph, PairBatch, Tracer, attribute, evaluate_masks, faithfulness_curve, split_batches
from circuitflow.circuits.tracing import metric_values
from circuitflow.metrics import logit_diff
from circuitflow.models import ModelHandle, load_bridge
from tests.conftest import TINY_ARCHS, save_tiny_model


def random_pairs(n: int, seq: int = 5, seed: int = 0) -> PairBatch:
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randint(4, 25, shape, generator=gen)  # noqa: E731  (number tokens)
    return PairBatch(draw(n, seq), draw(n, seq), draw(n, 2), torch.full((n,), seq))


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tiny(request, tmp_path_factory):
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    bridge = load_bridge(ModelHandle("tiny", str(path)), device="cpu", dtype="float64")
    bridge.arch = request.param
    return bridge, Tracer(bridge)


def assert_full_is_clean_and_empty_is_corrupt(tracer: Tracer, atol: float) -> None:
    """The masked run with no edge cut gives the clean logits, with every edge cut the corrupt run's."""
    batch = random_pairs(3)
    clean, _ = tracer.outputs(batch.clean)
    corrupt, corrupt_up = tracer.outputs(batch.corrupt)
    g = tracer.shape
    logits = tracer.run_masked(batch, torch.stack([torch.zeros_like(g.valid), g.valid]), corrupt_up)
    torch.testing.assert_close(logits[:3], clean, rtol=0, atol=atol)
    torch.testing.assert_close(logits[3:], corrupt, rtol=0, atol=atol)


def test_full_graph_is_clean_run_and_empty_graph_is_corrupt_run(tiny):
    assert_full_is_clean_and_empty_is_corrupt(tiny[1], atol=1e-6)


@pytest.mark.parametrize("intervention", ["patching", "mean-positional", "zero"])
def test_eap_equals_brute_force_first_order(tiny, intervention):
    """EAP's Δ_u·∂L/∂x_v, rebuilt from hook_q/k/v gradients and the norm's VJP, equals the central finite
    difference of L(x_v + εΔ_u) computed by a completely different path (forward edits of the masked run)."""
    bridge, tracer = tiny
    batch = random_pairs(3)
    means = tracer.means([random_pairs(6, seed=9).clean, random_pairs(6, seed=10).clean], positional=True)
    eap = attribute(bridge, [batch], logit_diff, "EAP", intervention, means=means, tracer=tracer, progress=False)
    g = tracer.shape
    edges = g.valid.nonzero()
    # HF's GPT-J attention and Llama's RMSNorm compute in float32 even in a float64 model: there a larger step and
    # an absolute tolerance of the float32 rounding noise (~1e-7 / 2ε) apply; GPT-NeoX and GPT-2 are checked tightly
    float32_inside = bridge.arch in ("gptj", "llama_gqa")
    eps, rtol, atol = (1e-3, 1e-2, 2e-5) if float32_inside else (1e-5, 1e-5, 1e-7)
    missing = torch.zeros(2 * len(edges), g.n_up, g.n_down, dtype=torch.float64)
    rows = torch.arange(len(edges))
    missing[rows, edges[:, 0], edges[:, 1]] = eps
    missing[rows + len(edges), edges[:, 0], edges[:, 1]] = -eps
    clean, _ = tracer.outputs(batch.clean)
    reference = tracer.reference(batch, intervention, means)
    values = metric_values(logit_diff, tracer.run_masked(batch, missing, reference), clean, batch).mean(1)
    finite_diff = (values[: len(edges)] - values[len(edges):]) / (2 * eps)
    expected = eap.scores[edges[:, 0], edges[:, 1]].double()
    torch.testing.assert_close(expected, finite_diff, rtol=rtol, atol=atol)


def test_scores_do_not_depend_on_batch_split(tiny):
    bridge, tracer = tiny
    whole = [random_pairs(8, seed=1)]
    for method in ("EAP-IG-inputs", "EAP-IG-activations"):
        one = attribute(bridge, whole, logit_diff, method, ig_steps=3, tracer=tracer, progress=False)
        four = attribute(bridge, split_batches(whole, 2), logit_diff, method, ig_steps=3, tracer=tracer,
                         progress=False)
        torch.testing.assert_close(one.scores, four.scores, rtol=1e-5, atol=1e-7)  # scores are float32


def test_one_step_integrated_gradients_are_eap(tiny):
    bridge, tracer = tiny
    batches = [random_pairs(4, seed=2)]
    eap = attribute(bridge, batches, logit_diff, "EAP", tracer=tracer, progress=False)
    for method in ("EAP-IG-inputs", "EAP-IG-activations"):
        one = attribute(bridge, batches, logit_diff, method, ig_steps=1, tracer=tracer, progress=False)
        if method == "EAP-IG-inputs":  # k = 0 only: the gradient at the reference input, not at the clean one
            continue
        torch.testing.assert_close(one.scores, eap.scores, rtol=1e-6, atol=1e-9)


def test_exact_scores_are_single_edge_patching(tiny):
    bridge, tracer = tiny
    batch = random_pairs(2, seed=3)
    exact = attribute(bridge, [batch], logit_diff, "exact", tracer=tracer, progress=False)
    g = tracer.shape
    u, v = [int(i) for i in g.valid.nonzero()[7]]
    in_graph = g.valid.clone()
    in_graph[u, v] = False
    patched = evaluate_masks(tracer, in_graph[None], [batch], logit_diff)[0].mean()
    clean = evaluate_masks(tracer, g.valid[None], [batch], logit_diff)[0].mean()
    assert math.isclose(float(exact.scores[u, v]), float(patched - clean), rel_tol=1e-5, abs_tol=1e-9)


def test_faithfulness_is_one_for_full_model_and_zero_for_empty_circuit(tiny):
    bridge, tracer = tiny
    batches = [random_pairs(4, seed=4)]
    graph = attribute(bridge, batches, logit_diff, "EAP", tracer=tracer, progress=False)
    values = evaluate_masks(tracer, torch.stack([graph.valid, torch.zeros_like(graph.valid)]), batches, logit_diff)
    clean, _ = tracer.outputs(batches[0].clean)
    corrupt, _ = tracer.outputs(batches[0].corrupt)
    torch.testing.assert_close(values[0], metric_values(logit_diff, clean, clean, batches[0])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(values[1], metric_values(logit_diff, corrupt, clean, batches[0])[0], atol=1e-5, rtol=0)
    curve = faithfulness_curve(bridge, graph, batches, logit_diff, fractions=(0.0001, 1.0), tracer=tracer)
    assert curve["n_edges"].tolist() == [1, graph.n_valid_edges]
    assert curve["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-9)


def test_grouped_query_attention_equals_its_ungrouped_twin(tmp_path):
    """A Llama with 2 key/value heads for 4 query heads and its twin with the k/v weights copied per query head
    compute the same function; the grouped k/v edge scores are the sums over each group of the twin's."""
    from transformers import AutoModelForCausalLM

    grouped_dir = save_tiny_model("llama_gqa", tmp_path / "gqa")
    grouped = AutoModelForCausalLM.from_pretrained(grouped_dir, dtype=torch.float64)
    twin_dir = save_tiny_model("llama_gqa", tmp_path / "mha", num_key_value_heads=4)
    twin = AutoModelForCausalLM.from_pretrained(twin_dir, dtype=torch.float64)
    state = grouped.state_dict()
    for name, value in state.items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            value = value.unflatten(0, (2, -1)).repeat_interleave(2, 0).flatten(0, 1)
        twin.state_dict()[name].copy_(value)
    bridges = [load_bridge(ModelHandle("m", str(d)), device="cpu", dtype="float64", hf_model=m.eval())
               for d, m in ((grouped_dir, grouped), (twin_dir, twin))]
    batches = [random_pairs(4, seed=5)]
    g_scores, t_scores = [attribute(b, batches, logit_diff, "EAP-IG-inputs", ig_steps=3, progress=False)
                          for b in bridges]
    g, t = g_scores, t_scores
    for layer in range(2):
        torch.testing.assert_close(g.scores[:, g.down(layer, "q")], t.scores[:, t.down(layer, "q")])
        for role in ("k", "v"):
            summed = t.scores[:, t.down(layer, role)].unflatten(1, (2, 2)).sum(2)
            torch.testing.assert_close(g.scores[:, g.down(layer, role)], summed)
        torch.testing.assert_close(g.scores[:, g.down(layer, "mlp")], t.scores[:, t.down(layer, "mlp")])
    torch.testing.assert_close(g.scores[:, -1], t.scores[:, -1])


def test_eap_agrees_with_transformer_lens_attribution_patching(tmp_path):
    """TransformerLens 4.3 takes the gradient on its *corrupt* run and scores (a_clean − a_corrupt)·g, so our EAP
    (gradient on the clean run, Δ = corrupt − clean) is its edge score with the two prompt sets swapped."""
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    path = save_tiny_model("gpt2", tmp_path / "gpt2")
    bridge = load_bridge(ModelHandle("m", str(path)), device="cpu", dtype="float64")
    batch = random_pairs(3, seed=6)
    batch.labels[:] = torch.tensor([7, 9])
    ours = attribute(bridge, [batch], logit_diff, "EAP", progress=False)
    for param in bridge.parameters():  # TransformerLens differentiates through the weights; we never need to
        param.requires_grad_(True)
    theirs = attribution_patch(bridge, batch.corrupt, batch.clean, lambda logits: logits[0, -1, 7] - logits[0, -1, 9],
                               EdgeAttributionConfig(granularity="edge"))
    g = ours
    up = lambda n: 0 if n.kind == "embed" else (  # noqa: E731
        g.head_up(n.layer).start + n.head if n.kind == "attn_head_out" else g.mlp_up(n.layer))
    down = lambda n: g.logits_down if n.kind == "logits" else (  # noqa: E731
        g.down(n.layer, "mlp").start if n.kind == "mlp_in" else g.down(n.layer, n.kind[0]).start + n.head)
    expected = torch.zeros_like(ours.scores, dtype=torch.float64)
    for (writer, reader), score in theirs.edge_scores.items():
        expected[up(writer), down(reader)] += score
    torch.testing.assert_close(ours.scores.double(), expected, rtol=1e-5, atol=1e-8)


def test_graph_selection_pruning_and_save_load(tmp_path):
    graph = Graph.empty(2, 4, 2, parallel=True, meta={"method": "test"})
    graph.scores = torch.randn(graph.n_up, graph.n_down, generator=torch.Generator().manual_seed(0)) * graph.valid
    graph.select_topn(10)
    assert graph.n_edges == 10
    assert graph.scores.abs()[graph.in_graph].min() >= graph.scores.abs()[graph.valid & ~graph.in_graph].max()
    graph.select_threshold(1.0, absolute=False)
    assert bool((graph.scores[graph.in_graph] >= 1.0).all())
    graph.select_greedy(6)
    assert graph.n_edges == 6 and bool(graph.in_graph[:, graph.logits_down].any())
    # a lone edge input -> a0.h0<q> reaches no logits: pruning removes it; input -> logits survives
    graph.in_graph = torch.zeros_like(graph.valid)
    graph.in_graph[0, graph.down(0, "q").start] = True
    graph.in_graph[0, graph.logits_down] = True
    graph.prune()
    assert graph.n_edges == 1 and bool(graph.in_graph[0, graph.logits_down])
    graph.save(tmp_path / "g.pt")
    loaded = Graph.load(tmp_path / "g.pt")
    assert torch.equal(loaded.scores, graph.scores) and torch.equal(loaded.in_graph, graph.in_graph)
    assert loaded.meta["method"] == "test"
    graph.to_json(tmp_path / "g.json")
    assert '"source": "input"' in (tmp_path / "g.json").read_text()


def test_parallel_blocks_have_no_same_layer_head_to_mlp_edges():
    parallel, sequential = Graph.empty(2, 4, 4, True), Graph.empty(2, 4, 4, False)
    heads0, mlp0 = parallel.head_up(0), parallel.down(0, "mlp")
    assert not parallel.valid[heads0, mlp0].any() and sequential.valid[heads0, mlp0].all()
    assert parallel.n_valid_edges == sequential.n_valid_edges - 2 * 4


@pytest.mark.parametrize("op", ["add", "sub"])
def test_integrated_gradients_track_exact_edge_patching_on_the_toy_model(toy_handle, op):
    """Measured on this 150-step toy model (24 pairs): Pearson 0.84–0.98 and Spearman 0.78–0.93 for EAP-IG-inputs
    and EAP-IG-activations (plain EAP 0.90–0.95 / 0.81–0.83). The floors 0.8 / 0.7 leave room for BLAS rounding
    but fail for scores that are wrong (shuffled scores give ~0)."""
    import numpy as np
    import pandas as pd

    from circuitflow.circuits import agreement, pair_batches
    from circuitflow.models import load_tokenizer

    bridge, tokenizer = load_bridge(toy_handle, device="cpu"), load_tokenizer(toy_handle)
    vocab, rng, rows = tokenizer.get_vocab(), np.random.default_rng(0), []
    for _ in range(24):
        (x, y), (x2, y2) = (sorted(rng.integers(0, 12, 2), reverse=True) if op == "sub" else rng.integers(0, 6, 2)
                            for _ in range(2))
        r, r2 = (x - y, x2 - y2) if op == "sub" else (x + y, x2 + y2)
        if r != r2:
            sym = "-" if op == "sub" else "+"
            rows.append(dict(prompt=f"{x}{sym}{y}=", corrupt_prompt=f"{x2}{sym}{y2}=", answer_token=vocab[str(r)],
                             corrupt_answer_token=vocab[str(r2)]))
    batches = pair_batches(pd.DataFrame(rows), tokenizer, 64)
    tracer = Tracer(bridge)
    exact = attribute(bridge, batches, logit_diff, "exact", tracer=tracer, progress=False)
    for method in ("EAP-IG-inputs", "EAP-IG-activations"):
        found = agreement(attribute(bridge, batches, logit_diff, method, ig_steps=5, tracer=tracer, progress=False),
                          exact)
        assert found["pearson"] >= 0.8 and found["spearman"] >= 0.7, (method, found)


def test_neuron_attribution_equals_brute_force_first_order(tiny):
    """Per-example Δ_n·∂m/∂a_n at the last position against central differences of m(a_n + εΔ_n), all neurons
    perturbed at once by stacking one variant per neuron in the batch."""
    from functools import partial

    from circuitflow.circuits import neuron_attribution, post_activations

    bridge, tracer = tiny
    batch = random_pairs(2, seed=7)
    scores = neuron_attribution(bridge, [batch], logit_diff, tracer=tracer, progress=False)  # [2, L, d_mlp]
    _, _, clean_post = post_activations(tracer, batch.clean)
    _, _, corrupt_post = post_activations(tracer, batch.corrupt)
    delta = (corrupt_post - clean_post)[:, -1]  # [b, L, d_mlp] at the last position
    a = tracer.anatomy
    n = a.n_layers * a.d_mlp
    eps = 1e-3 if bridge.arch in ("gptj", "llama_gqa") else 1e-5
    clean_logits, _ = tracer.outputs(batch.clean)
    values = []
    for sign in (1, -1):
        def bump(layer, tensor, hook, sign=sign):
            rows = torch.arange(n).repeat_interleave(len(batch))  # variant of each row (neuron index)
            tensor = tensor.clone()
            hit = rows // a.d_mlp == layer
            example = torch.arange(len(batch)).repeat(n)
            neuron = rows % a.d_mlp
            tensor[hit, -1, neuron[hit]] += sign * eps * delta[example[hit], layer, neuron[hit]]
            return tensor

        hooks = [(la.hooks["mlp_post"], partial(bump, layer)) for layer, la in enumerate(a.layers)]
        with bridge.hooks(fwd_hooks=hooks):
            logits = bridge(batch.clean.repeat(n, 1))
        values.append(metric_values(logit_diff, logits, clean_logits, batch))  # [n, b]
    finite_diff = ((values[0] - values[1]) / (2 * eps)).T.reshape(len(batch), a.n_layers, a.d_mlp)
    atol = 2e-5 if bridge.arch in ("gptj", "llama_gqa") else 1e-7
    torch.testing.assert_close(scores.double(), finite_diff, rtol=1e-3, atol=atol)


def test_mean_interventions_use_an_intervention_dataset(tiny):
    from circuitflow.circuits import token_batches
    from circuitflow.toy import build_tokenizer

    bridge, tracer = tiny
    tokenizer = build_tokenizer(20)
    batches = token_batches(tokenizer, ["3+4=", "1+2=", "12-5=", "3+4=5"], 2, length=4)
    assert [b.shape for b in batches] == [torch.Size([2, 4]), torch.Size([1, 4])]
    positional = tracer.means(batches, positional=True)
    assert positional.shape == (4, tracer.shape.n_up, tracer.anatomy.d_model)
    pooled = tracer.means(batches, positional=False)
    torch.testing.assert_close(pooled[0], positional.mean(0))


def test_prompt_pairs_refuse_a_tokenizer_that_adds_tokens(toy_handle):
    """The bridge's tokenizer prepends BOS; prompt sets were chosen with the model's own tokenizer."""
    from circuitflow.circuits import PairError, pair_batches
    from circuitflow.models import load_tokenizer

    tokenizer = load_tokenizer(toy_handle)
    prompts = pd.DataFrame(dict(prompt=["3+4=", "10-2="], corrupt_prompt=["1+1=", "9-6="], answer_token=[11, 12],
                                corrupt_answer_token=[6, 7], prompt_len=[4, 4]))
    assert [len(b) for b in pair_batches(prompts, tokenizer, 8)] == [2]
    with pytest.raises(PairError, match="BOS"):
        pair_batches(prompts, load_bridge(toy_handle, device="cpu").tokenizer, 8)


def test_masked_runs_are_chunked_to_a_memory_budget(tiny):
    bridge, tracer = tiny
    whole = tracer.rows_per_pass(5)
    assert tracer.rows_per_pass(5, budget_bytes=1) == 1 and 1 < whole <= 4096
    batches = [random_pairs(3, seed=8)]
    g = tracer.shape
    masks = torch.stack([g.valid, torch.zeros_like(g.valid), g.valid & (torch.arange(g.n_down) % 2 == 0)])
    one_pass = evaluate_masks(tracer, masks, batches, logit_diff)
    tracer.rows_per_pass = lambda pos, budget_bytes=0, cap=0: 3  # one mask (3 rows) per forward
    torch.testing.assert_close(evaluate_masks(tracer, masks, batches, logit_diff), one_pass, rtol=0, atol=1e-6)
    del tracer.rows_per_pass  # back to the class method
