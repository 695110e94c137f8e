"""Training sparse dictionaries on the tiny toy model, their quality metrics, and splicing them into the model."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from circuitflow.features.dictionary import DictionaryInfo, SparseDictionary, hook_names
from circuitflow.features.quality import (TABLE_COLUMNS, dictionary_quality, quality_table, splice_accuracy,
                                          spliced)
from circuitflow.features.training import DictionarySpec, collect_activations, train_dictionaries, train_dictionary

SPEC = DictionarySpec(activation="topk", expansion=4, k=4, steps=300, batch_size=256, lr=3e-3, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread(toy_dir):
    """Train with one thread: these small matrices gain nothing from two, and on a busy machine two threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bridge(toy_handle):
    from circuitflow.models import load_bridge

    return load_bridge(toy_handle, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def prompts(toy_handle):
    """Every legal prompt of the tiny toy per operator: ``(tokens [n, 4], answer ids [n])``."""
    from circuitflow.toy import build_tokenizer, make_data
    from tests.conftest import TINY_RECIPE

    data = make_data(TINY_RECIPE, build_tokenizer(TINY_RECIPE.max_number))
    return {op: (torch.cat([data.train_tokens[op], data.heldout_tokens[op]]),
                 torch.cat([data.train_targets[op], data.heldout_targets[op]])) for op in data.train_tokens}


@pytest.fixture(scope="module")
def activations(bridge, prompts):
    tokens = torch.cat([t for t, _ in prompts.values()])
    infos = [SPEC.info(site, layer) for site in ("mlp", "attn") for layer in (0, 1)]
    return collect_activations(bridge, tokens, infos, batch_size=300)


@pytest.fixture(scope="module")
def trained(bridge, prompts):
    return train_dictionaries(bridge, torch.cat([t for t, _ in prompts.values()]), SPEC, progress=False)


def identity_sae(site: str, layer: int, d: int) -> SparseDictionary:
    """A ReLU dictionary with features ``relu(x)`` and ``relu(-x)`` whose reconstruction is exactly ``x``."""
    dictionary = SparseDictionary(DictionaryInfo(site, layer, "relu"), d, d, 2 * d)
    eye = torch.eye(d)
    dictionary.W_enc.data = torch.cat([eye, -eye], 1)
    dictionary.W_dec.data = torch.cat([eye, -eye], 0)
    return dictionary.requires_grad_(False)


# ---------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(("field", "value"), [("activation", "gelu"), ("expansion", 0), ("k", 0), ("steps", 0),
                                              ("batch_size", 0), ("lr", 0.0)])
def test_spec_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"dictionary {field}"):
        DictionarySpec(**{field: value})
    with pytest.raises(ValueError, match="dictionary l1"):
        DictionarySpec(activation="relu", l1=0.0)


def test_collect_activations_matches_the_cache(bridge, prompts, activations):
    tokens = torch.cat([t for t, _ in prompts.values()])
    names = [name for s in ("mlp", "attn") for name in hook_names(SPEC.info(s, 1))]
    _, cache = bridge.run_with_cache(tokens[:7], names_filter=lambda name: name in names)
    inputs, targets = activations["mlp1"]
    assert inputs.shape == targets.shape == (len(tokens) * 4, 32)
    torch.testing.assert_close(inputs[:28], cache["blocks.1.mlp.hook_in"].flatten(0, 1))
    torch.testing.assert_close(targets[:28], cache["blocks.1.hook_mlp_out"].flatten(0, 1))
    z_in, z_out = activations["attn1"]
    assert z_in is z_out
    torch.testing.assert_close(z_in[:28], cache["blocks.1.attn.hook_z"].flatten(0, 1).flatten(1))
    mask = torch.ones(7, 4, dtype=torch.long)
    mask[:, 0] = 0
    masked, _ = collect_activations(bridge, tokens[:7], [SPEC.info("mlp", 1)], attention_mask=mask)["mlp1"]
    assert masked.shape == (21, 32)


def test_training_is_deterministic_given_the_seed(activations):
    inputs, targets = activations["mlp0"]
    spec = DictionarySpec(activation="topk", expansion=2, k=3, steps=30, batch_size=64, seed=3)
    first, again = (train_dictionary(inputs, targets, spec.info("mlp", 0), spec, progress=False) for _ in range(2))
    other = train_dictionary(inputs, targets, spec.info("mlp", 0), replace(spec, seed=4), progress=False)
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])
    assert not torch.equal(first.W_dec, other.W_dec)


def test_topk_dictionaries_reconstruct_the_tiny_toy(trained, activations):
    assert sorted(trained) == ["attn0", "attn1", "mlp0", "mlp1"]
    for name, dictionary in trained.items():
        quality = dictionary_quality(dictionary, *activations[name])
        assert quality["nmse"] <= 0.1, name  # measured: mlp0 0.003, mlp1 0.014, attn0 0.04, attn1 0.04
        assert quality["l0"] <= SPEC.k and dictionary.n_features == 4 * 32


@pytest.mark.parametrize(("activation", "weak", "strong"), [("relu", 1e-2, 1e-1), ("jumprelu", 1e-3, 1e-2)])
def test_sparsity_penalty_trains_and_sparsifies(activations, activation, weak, strong):
    inputs, targets = activations["attn0"]
    quality = {}
    for l1 in (weak, strong):
        spec = DictionarySpec(activation=activation, expansion=4, l1=l1, steps=300, batch_size=256, skip=True)
        dictionary = train_dictionary(inputs, targets, spec.info("attn", 0), spec, progress=False)
        assert dictionary.W_skip is None  # SAEs never skip
        quality[l1] = dictionary_quality(dictionary, inputs, targets)
    assert quality[weak]["nmse"] <= 0.1 and quality[strong]["nmse"] <= 0.2  # measured: <= 0.02 and <= 0.05
    assert quality[strong]["l0"] < 0.8 * quality[weak]["l0"] < 0.8 * 128  # measured: 22 vs 42 (relu), 17 vs 27


def test_transcoder_skip_connection(activations):
    inputs, targets = activations["mlp1"]
    spec = DictionarySpec(activation="topk", expansion=2, k=2, steps=200, batch_size=256, skip=True)
    dictionary = train_dictionary(inputs, targets, spec.info("mlp", 1), spec, progress=False)
    assert dictionary.W_skip is not None and dictionary.W_skip.abs().sum() > 0
    assert dictionary_quality(dictionary, inputs, targets)["nmse"] <= 0.1


# ---------------------------------------------------------------------------------------------------- quality
def test_quality_metrics_equal_hand_computations():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=gen) + torch.tensor([3.0, 0, 0, 0])
    x[:, 0] = x[:, 0].abs() + 0.1  # relu(x_0) fires on every token, relu(-x_0) on none
    x[:150, 3] = 0
    x[150:, 3] = torch.where(torch.arange(50) < 10, 1.0, -1.0)  # relu(x_3) on 10 tokens (5%), relu(-x_3) on 40 (20%)
    perfect = identity_sae("attn", 0, 4)
    quality = dictionary_quality(perfect, x, x)
    assert quality["nmse"] == pytest.approx(0, abs=1e-12) and quality["explained_variance"] == pytest.approx(1)
    active = torch.cat([x > 0, x < 0], 1)
    assert quality["l0"] == pytest.approx(float(active.sum(1).double().mean()))
    assert quality["dead_fraction"] == pytest.approx(1 / 8)  # relu(-x_0)
    assert quality["dead_fraction"] == pytest.approx(float((active.sum(0) == 0).double().mean()))
    assert quality["dense_fraction"] == pytest.approx(6 / 8)  # all but relu(-x_0) and relu(x_3)
    assert dictionary_quality(perfect, x, x, dense_threshold=0.01)["dense_fraction"] == pytest.approx(7 / 8)

    mean = SparseDictionary(DictionaryInfo("attn", 0, "relu"), 4, 4, 8)
    mean.b_dec.data = x.mean(0)
    quality = dictionary_quality(mean.requires_grad_(False), x, x)
    assert quality["nmse"] == pytest.approx(1) and quality["explained_variance"] == pytest.approx(0, abs=1e-6)
    assert quality["l0"] == 0 and quality["dead_fraction"] == 1

    shifted = identity_sae("attn", 0, 4)
    shifted.b_dec.data = torch.tensor([0.5, 0, 0, 0])
    quality = dictionary_quality(shifted, x, x)
    assert quality["explained_variance"] == pytest.approx(1)  # a constant offset is not unexplained variance
    assert quality["nmse"] == pytest.approx(0.25 * len(x) / float((x - x.mean(0)).pow(2).sum()))


# ---------------------------------------------------------------------------------------------------- splicing
def test_splicing_an_exact_attention_sae_leaves_logits_unchanged(bridge, prompts):
    tokens = prompts["add"][0][:20]
    exact = {f"attn{layer}": identity_sae("attn", layer, 32) for layer in (0, 1)}
    original = bridge(tokens)
    with spliced(bridge, exact):
        torch.testing.assert_close(bridge(tokens), original)
    garbage = identity_sae("attn", 1, 32)
    garbage.b_dec.data = torch.full((32,), 3.0)
    with spliced(bridge, {"attn1": garbage}):
        assert (bridge(tokens) - original).abs().max() > 0.1
    torch.testing.assert_close(bridge(tokens), original)  # the hooks are gone after the context


def test_splicing_a_transcoder_replaces_the_mlp_output_by_its_function_of_the_mlp_input(bridge, prompts):
    tokens = prompts["sub"][0][:20]
    linear = SparseDictionary(DictionaryInfo("mlp", 0, "relu"), 32, 32, 4, skip=True)
    gen = torch.Generator().manual_seed(0)
    linear.W_skip.data = torch.randn(32, 32, generator=gen) / 6
    linear.b_dec.data = torch.randn(32, generator=gen)
    linear.requires_grad_(False)
    stored = {}

    def keep(x, hook):
        stored["x"] = x

    def linear_out(out, hook):
        return stored["x"] @ linear.W_skip + linear.b_dec

    with bridge.hooks(fwd_hooks=[("blocks.0.mlp.hook_in", keep), ("blocks.0.hook_mlp_out", linear_out)]):
        expected = bridge(tokens)
    with spliced(bridge, {"mlp0": linear}):
        torch.testing.assert_close(bridge(tokens), expected)
    assert (expected - bridge(tokens)).abs().max() > 0.1


def test_splice_accuracy_and_quality_table(bridge, prompts, trained, activations):
    tokens, answers = prompts["add"]
    with torch.no_grad():
        logits = bridge(tokens)[:, -1]
    accuracy, loss = splice_accuracy(bridge, tokens, answers, None, batch_size=50)
    assert accuracy == pytest.approx(float((logits.argmax(-1) == answers).double().mean()))
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits.double(), answers)))
    exact = {"attn0": identity_sae("attn", 0, 32)}
    assert splice_accuracy(bridge, tokens, answers, exact) == pytest.approx((accuracy, loss))

    table = quality_table(bridge, {op: t for op, (t, _) in prompts.items()},
                          {op: a for op, (_, a) in prompts.items()}, trained, activations)
    assert list(table.columns) == list(TABLE_COLUMNS) and len(table) == 4 * 6 + 4
    none = table[table.dictionary == "none"]
    assert (none.accuracy == none.accuracy_original).all() and none.nmse.isna().all()
    add = table[table.operator == "add"].set_index("dictionary")
    assert add.loc["none", "accuracy"] == pytest.approx(accuracy)
    assert add.loc["mlp1", "accuracy"] == pytest.approx(splice_accuracy(bridge, tokens, answers,
                                                                        {"mlp1": trained["mlp1"]})[0])
    pooled = table[table.operator == "all"].set_index("dictionary")
    assert pooled.loc["attn0", "nmse"] == pytest.approx(dictionary_quality(trained["attn0"],
                                                                          *activations["attn0"])["nmse"])
    assert math.isnan(pooled.loc["attn0", "accuracy"]) and (table[table.operator == "add"].nmse.notna().sum() == 4)
