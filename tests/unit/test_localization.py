"""The paper's localization against naive computations: activation patching, neuron patching, mean-ablation
faithfulness, probes and attention analysis."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from circuitflow.circuits import PairBatch, Tracer
from circuitflow.circuits.tracing import metric_values
from circuitflow.localization.patching import component_sites, patch_sites, site_activations
from circuitflow.metrics import ie
from circuitflow.models import ModelHandle, load_bridge
from tests.conftest import TINY_ARCHS, save_tiny_model
from tests.unit.test_circuits import random_pairs


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tracer(request, tmp_path_factory):
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    return Tracer(load_bridge(ModelHandle("tiny", str(path)), device="cpu", dtype="float64"))


def naive_patch(tracer: Tracer, batch: PairBatch, layer: int, kind: int, unit: int, pos: int) -> torch.Tensor:
    """One site, one forward, written independently of patch_sites: the per-example IE."""
    _, z_c, post_c = site_activations(tracer, batch.corrupt)
    la = tracer.anatomy.layers[layer]

    def hook(tensor, hook):
        tensor = tensor.clone()
        if kind == 0:
            tensor[:, pos, unit] = z_c[layer][:, pos, unit]
        elif kind == 1:
            tensor[:, pos] = post_c[layer][:, pos]
        else:
            tensor[:, pos, unit] = post_c[layer][:, pos, unit]
        return tensor

    clean = tracer.bridge(batch.clean)
    with tracer.bridge.hooks(fwd_hooks=[(la.hooks["z"] if kind == 0 else la.hooks["mlp_post"], hook)]):
        patched = tracer.bridge(batch.clean)
    return metric_values(ie, patched, clean, batch)[0]


def test_patching_a_component_with_its_own_activation_has_zero_effect(tracer):
    batch = random_pairs(3)
    same = PairBatch(batch.clean, batch.clean, batch.labels, batch.lengths)
    sites = component_sites(tracer.anatomy.n_layers, tracer.anatomy.n_heads, [1, 2, 3, 4])
    values = patch_sites(tracer, same, sites["layer"], sites["unit"], sites["pos"], sites["kind"], {"ie": ie})
    assert values["ie"].abs().max() < 1e-12


def test_patching_everything_from_the_corrupt_run_gives_the_corrupt_prediction(tracer):
    batch = random_pairs(3, seed=1)
    corrupt_logits, z_c, post_c = site_activations(tracer, batch.corrupt)
    _, corrupt_in = tracer.outputs(batch.corrupt)
    hooks = [(tracer.anatomy.input_hook, lambda t, hook: corrupt_in[:, :, 0])]
    for i, la in enumerate(tracer.anatomy.layers):
        hooks += [(la.hooks["z"], lambda t, hook, i=i: z_c[i]), (la.hooks["mlp_post"], lambda t, hook, i=i: post_c[i])]
    with tracer.bridge.hooks(fwd_hooks=hooks):
        logits = tracer.bridge(batch.clean)
    torch.testing.assert_close(logits, corrupt_logits, rtol=0, atol=1e-6)


def test_batched_component_patching_equals_one_at_a_time(tracer):
    batch = random_pairs(2, seed=2)
    sites = component_sites(tracer.anatomy.n_layers, tracer.anatomy.n_heads, [1, 4])
    batched = patch_sites(tracer, batch, sites["layer"], sites["unit"], sites["pos"], sites["kind"], {"ie": ie},
                          max_rows=7)["ie"]
    for s in range(len(sites["layer"])):
        one = naive_patch(tracer, batch, *(int(sites[k][s]) for k in ("layer", "kind", "unit", "pos")))
        torch.testing.assert_close(batched[s].double(), one.float().double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("prefix_cache", [False, True], ids=["full-prompt", "prefix-cache"])
def test_vectorized_neuron_patching_equals_the_naive_loop(tracer, prefix_cache, monkeypatch):
    """Both paths against one forward per neuron. The prefix-cache path is forced here even where the bridge
    contract refused it: it must then be wrong (the contract's refusal was needed), and right where it was allowed."""
    from circuitflow.localization.neuron_scores import exact_neuron_effects

    allowed = tracer.contract.prefix_cache
    monkeypatch.setattr(tracer, "contract", dataclasses.replace(tracer.contract, prefix_cache=prefix_cache))
    batch = random_pairs(2, seed=3)
    effects = exact_neuron_effects(tracer, [batch], layer=1, max_rows=50)  # [N, d_mlp], 5 or 25 neurons per pass
    assert effects.dtype == torch.float64 and torch.isfinite(effects).all()
    neurons = (0, 5, 24, 25, tracer.anatomy.d_mlp - 1)
    naive = torch.stack([naive_patch(tracer, batch, 1, 2, n, batch.clean.shape[1] - 1) for n in neurons], dim=1)
    if prefix_cache and not allowed:
        assert (effects[:, list(neurons)] - naive).abs().max() > 1e-3
    else:
        torch.testing.assert_close(effects[:, list(neurons)], naive, rtol=1e-9, atol=1e-12)


def test_mean_ablation_faithfulness_is_one_for_the_full_model_and_zero_for_the_empty_circuit(tracer):
    from circuitflow.localization.mean_ablation import faithfulness_table, paper_circuits, site_means

    a = tracer.anatomy
    batches = [random_pairs(4, seed=4)]
    z_mean, post_mean = site_means(tracer, [random_pairs(8, seed=5).clean, random_pairs(8, seed=6).clean])
    rank = torch.stack([torch.randperm(a.d_mlp, generator=torch.Generator().manual_seed(0)) for _ in range(a.n_layers)])
    circuits = paper_circuits(a.n_heads, [(0, 1), (1, 2)], rank, torch.tensor([True, False]), ks=[4, a.d_mlp],
                              random_seeds=[0])
    heads, neurons, labels = circuits
    table = faithfulness_table(tracer, batches, z_mean, post_mean, circuits, chunk=3)
    for column in ("faithfulness", "faithfulness_median", "faithfulness_of_means"):
        by = table.set_index(["circuit", "k", "seed"])[column]
        assert by[("full", a.d_mlp, -1)] == pytest.approx(1.0)
        assert by[("empty", 0, -1)] == pytest.approx(0.0)
    # top-k with k = d_mlp keeps every neuron: only the heads outside the circuit are ablated
    assert neurons[labels.index(dict(circuit="top", k=a.d_mlp, seed=-1))].all()
    assert not heads[labels.index(dict(circuit="top", k=4, seed=-1))][0, 0]


def test_probe_finds_a_planted_linear_feature_and_not_noise():
    from circuitflow.localization.probing import heuristics_layer, probe_accuracy

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (400,), generator=gen)
    directions = torch.randn(5, 16, generator=gen)
    planted = torch.randn(400, 16, generator=gen) * 0.3 + directions[labels]
    noise = torch.randn(400, 16, generator=gen)
    assert probe_accuracy(planted, labels, seed=0) > 0.95
    assert probe_accuracy(noise, labels, seed=0) < 0.45
    table = pd.DataFrame(dict(layer=[0, 1, 2, 3], position="last", accuracy=[0.1, 0.3, 0.9, 1.0]))
    assert heuristics_layer(table, threshold=0.8) == 1


def test_attention_grid_rows_sum_to_at_most_one_and_ov_matrix_shape(toy_handle):
    from circuitflow.localization.attention import attention_grid, ov_table, ov_transition
    from circuitflow.models import load_tokenizer

    bridge = load_bridge(toy_handle, device="cpu")
    tracer = Tracer(bridge)
    table = attention_grid(tracer, load_tokenizer(toy_handle), "add", 5, [(1, 0), (0, 2)])
    assert len(table) == 2 * 3 * 36
    totals = table.groupby(["layer", "head", "op1", "op2"])["attention"].sum()
    assert ((totals > 0) & (totals <= 1 + 1e-6)).all()
    ov = ov_transition(tracer, 1, 0, list(range(4, 10)))
    assert ov.shape == (6, 6) and torch.isfinite(ov).all()
    tokenizer = load_tokenizer(toy_handle)
    table = ov_table(tracer, tokenizer, [(1, 0)], 5)  # numbers 0..5 are token ids 4..9 in the toy vocabulary
    assert len(table) == 36 and tokenizer.convert_tokens_to_ids(["0", "5"]) == [4, 9]
    assert table["value"].to_numpy() == pytest.approx(ov.flatten().numpy())


def test_ie_map_table_on_the_toy_model(toy_handle):
    from circuitflow.localization.ie_maps import ie_map, top_heads
    from circuitflow.models import load_hf_model, load_tokenizer
    from circuitflow.prompts import PromptConfig, build_prompt_set

    tok, hf = load_tokenizer(toy_handle), load_hf_model(toy_handle, "cpu")
    cfg = PromptConfig(operand_max=12, k=4)
    prompts, answers = build_prompt_set(hf, tok, "add", cfg, 12)
    pool = answers[answers["correct"]]
    tracer = Tracer(load_bridge(toy_handle, device="cpu"))
    table = ie_map(tracer, tok, prompts, pool, seeds=[0, 1], progress=False)
    assert len(table) == 2 * 2 * 5 * 4  # seeds × layers × (4 heads + MLP) × positions
    assert set(table["position"]) == {"op1", "operator", "op2", "last"}
    values = table[["ie", "ie_median", "logit_diff_change", "logit_diff_change_median"]]
    assert (values.dtypes == "float64").all() and np.isfinite(values.to_numpy()).all()
    assert (table["n_prompts"] == 4).all()
    assert len(top_heads(table, 3)) == 3


def test_neuron_table_columns_are_float64_and_finite(tracer):
    from circuitflow.localization.neuron_scores import neuron_table

    table = neuron_table(tracer, [random_pairs(3, seed=11)], exact_layers=[1], progress=False)
    columns = ["attribution_mean", "attribution_std", "importance", "exact_ie"]
    assert (table[columns].dtypes == "float64").all()
    assert np.isfinite(table[columns[:3]].to_numpy()).all()
    assert np.isfinite(table.loc[table["layer"] == 1, "exact_ie"]).all()
    assert table.loc[table["layer"] == 0, "exact_ie"].isna().all()
