"""Feature interventions (circuitflow.features.interventions) on tiny random models with random dictionaries, checked
against hand-written hooks: set/ablate/steer change exactly the feature's decoder contribution, positions restrict
the change, grab-and-delete moves the residual by exactly the contribution, attention patterns react causally."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from circuitflow.features.dictionary import DictionaryInfo, SparseDictionary
from circuitflow.features.interventions import (
    FeatureIntervention,
    grab_and_delete,
    intervene,
    intervention_effects,
    interventions_from_config,
)
from circuitflow.models import ModelHandle, load_bridge
from tests.conftest import save_tiny_model

N_FEATURES = 16
ATOL = 1e-10


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa"])
def bridge(request, tmp_path_factory):
    torch.set_num_threads(2)
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param) / "model")
    return load_bridge(ModelHandle("tiny", str(path)), device="cpu", dtype="float64")


def random_dictionary(site: str, layer: int, activation: str = "relu", k: int = 0, seed: int = 0) -> SparseDictionary:
    """A d_in = d_out = 32 dictionary (d_model = n_heads · d_head = 32 in the tiny models) with most features on."""
    generator = torch.Generator().manual_seed(seed)
    d = SparseDictionary(DictionaryInfo(site, layer, activation, k), 32, 32, N_FEATURES, dtype=torch.float64)
    with torch.no_grad():
        for p in (d.W_enc, d.W_dec, d.b_dec):
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.5)
        d.b_enc.fill_(0.5)
    return d


@pytest.fixture(scope="module")
def dictionaries():
    return {"mlp0": random_dictionary("mlp", 0, seed=1), "mlp1": random_dictionary("mlp", 1, "topk", k=6, seed=2),
            "attn0": random_dictionary("attn", 0, seed=3), "attn1": random_dictionary("attn", 1, seed=4)}


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(0))


def capture(bridge, tokens, names):
    """Logits and the value of each named hook, as the forward continues with it (after earlier hooks' edits)."""
    store = {}

    def keep(name, tensor, hook):
        store[name] = tensor.detach().clone()

    with bridge.hooks(fwd_hooks=[(name, partial(keep, name)) for name in names]):
        logits = bridge(tokens)
    return logits.detach(), store


def hand_activation(d: SparseDictionary, x, feature: int):
    """relu(x @ W_enc[:, f] + b_enc[f]) for a relu dictionary, written out by hand: ``[b, pos]``."""
    return torch.clamp(x @ d.W_enc[:, feature] + d.b_enc[feature], min=0).detach()


def most_active(d: SparseDictionary, x, position: int) -> int:
    """The feature whose smallest activation over the prompts at ``position`` is largest (on in every prompt)."""
    return int(d.encode(x[:, position].flatten(1)).min(0).values.argmax())


def test_set_to_own_activation_and_zero_steer_change_nothing(bridge, dictionaries, tokens):
    clean, store = capture(bridge, tokens[:1], ["blocks.1.mlp.hook_in", "blocks.0.attn.hook_z"])
    mlp1, attn0 = dictionaries["mlp1"], dictionaries["attn0"]
    own_mlp = mlp1.encode(store["blocks.1.mlp.hook_in"])[0, 3].detach()  # [features] at position 3 (topk)
    own_attn = attn0.encode(store["blocks.0.attn.hook_z"].flatten(-2))[0, -1].detach()
    assert 2 <= (own_mlp > 0).sum() <= 6 and (own_attn > 0).sum() > 2
    interventions = ([FeatureIntervention("mlp1", f, "set", (3,), float(own_mlp[f])) for f in range(N_FEATURES)]
                     + [FeatureIntervention("attn0", f, "set", (-1,), float(own_attn[f])) for f in range(N_FEATURES)]
                     + [FeatureIntervention("mlp1", 0, "steer", (0, 1), 0.0)])
    with intervene(bridge, dictionaries, interventions):
        edited, _ = capture(bridge, tokens[:1], [])
    torch.testing.assert_close(edited, clean, atol=ATOL, rtol=0)
    with intervene(bridge, dictionaries, [FeatureIntervention("mlp1", int(own_mlp.argmax()), "set", (3,), 0.0)]):
        edited, _ = capture(bridge, tokens[:1], [])
    assert (edited - clean).abs().max() > 1e-4  # the same path does change the logits when the value differs


def test_ablate_equals_hand_written_hooks(bridge, dictionaries, tokens):
    mlp0, attn1 = dictionaries["mlp0"], dictionaries["attn1"]
    features = [3, 5, 11]
    kept = {}

    def keep_input(tensor, hook):
        kept["x"] = tensor

    def remove_mlp(tensor, hook):  # [b, pos, d_model]
        return tensor - sum(hand_activation(mlp0, kept["x"], f)[..., None] * mlp0.W_dec[f].detach() for f in features)

    def remove_attn(tensor, hook):  # [b, pos, heads, d_head]
        z = tensor.flatten(-2)
        change = sum(hand_activation(attn1, z, f)[..., None] * attn1.W_dec[f].detach() for f in features)
        return tensor - change.view(tensor.shape)

    hand_hooks = [("blocks.0.mlp.hook_in", keep_input), ("blocks.0.hook_mlp_out", remove_mlp),
                  ("blocks.1.attn.hook_z", remove_attn)]
    with bridge.hooks(fwd_hooks=hand_hooks):
        expected, _ = capture(bridge, tokens, [])
    config = [dict(dictionary=name, feature=f, mode="ablate") for name in ("mlp0", "attn1") for f in features]
    with intervene(bridge, list(dictionaries.values()), config):
        edited, _ = capture(bridge, tokens, [])
    clean, _ = capture(bridge, tokens, [])
    torch.testing.assert_close(edited, expected, atol=ATOL, rtol=0)
    assert (edited - clean).abs().max() > 1e-4


def test_steer_adds_value_times_decoder_row_at_the_chosen_positions(bridge, dictionaries, tokens):
    names = ["blocks.1.hook_mlp_out", "blocks.0.attn.hook_z"]
    _, clean = capture(bridge, tokens, names)
    with intervene(bridge, dictionaries, [FeatureIntervention("mlp1", 2, "steer", (1, -1), 1.5)]):
        _, edited = capture(bridge, tokens, names)
    mlp_diff = edited[names[0]] - clean[names[0]]  # [b, pos, d_model]
    expected = torch.zeros_like(mlp_diff)
    expected[:, [1, 5]] = 1.5 * dictionaries["mlp1"].W_dec[2].detach()
    torch.testing.assert_close(mlp_diff, expected, atol=ATOL, rtol=0)
    with intervene(bridge, dictionaries, [FeatureIntervention("attn0", 7, "steer", (0,), -2.0)]):
        _, edited = capture(bridge, tokens, names)
    z_diff = edited[names[1]] - clean[names[1]]  # [b, pos, heads, d_head]
    expected = torch.zeros_like(z_diff)
    expected[:, 0] = -2.0 * dictionaries["attn0"].W_dec[7].detach().view(4, 8)
    torch.testing.assert_close(z_diff, expected, atol=ATOL, rtol=0)


def test_positions_restrict_the_change(bridge, dictionaries, tokens):
    name = "blocks.0.hook_mlp_out"
    clean_logits, clean = capture(bridge, tokens, ["blocks.0.mlp.hook_in", name])
    f = most_active(dictionaries["mlp0"], clean["blocks.0.mlp.hook_in"], 2)
    with intervene(bridge, dictionaries, [FeatureIntervention("mlp0", f, "ablate", (2,))]):
        logits, edited = capture(bridge, tokens, [name])
    diff = edited[name] - clean[name]
    a = hand_activation(dictionaries["mlp0"], clean["blocks.0.mlp.hook_in"], f)  # [b, pos]
    assert (a[:, 2] > 0).all()
    torch.testing.assert_close(diff[:, 2], -a[:, 2, None] * dictionaries["mlp0"].W_dec[f].detach(), atol=ATOL, rtol=0)
    assert diff[:, [0, 1, 3, 4, 5]].abs().max() == 0
    assert (logits[:, :2] - clean_logits[:, :2]).abs().max() == 0  # causal: earlier positions never see it
    assert (logits[:, 2:] - clean_logits[:, 2:]).abs().amax((0, 2)).min() > 0


def test_grab_and_delete_moves_the_residual_by_exactly_the_contribution(bridge, dictionaries, tokens):
    before = ["blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.0.mlp.hook_in", "blocks.0.attn.hook_z"]
    names = [*before, "blocks.1.hook_in", "ln_final.hook_in"]
    _, clean = capture(bridge, tokens, names)
    mlp0, attn0 = dictionaries["mlp0"], dictionaries["attn0"]
    f = most_active(mlp0, clean["blocks.0.mlp.hook_in"], 4)
    a = hand_activation(mlp0, clean["blocks.0.mlp.hook_in"], f)[:, 4]  # [b]
    assert (a > 0).all()
    with grab_and_delete(bridge, mlp0, f, 4, layer=1):
        _, edited = capture(bridge, tokens, names)
    for name in before:
        assert (edited[name] - clean[name]).abs().max() == 0
    expected = torch.zeros_like(clean["blocks.1.hook_in"])
    expected[:, 4] = -a[:, None] * mlp0.W_dec[f].detach()
    torch.testing.assert_close(edited["blocks.1.hook_in"] - clean["blocks.1.hook_in"], expected, atol=ATOL, rtol=0)

    # an attention feature's contribution is what ablating it at that position takes from hook_attn_out (o(z) of the
    # head outputs); grabbed before the final norm (layer = n_layers), with a steer on another feature alongside
    g = most_active(attn0, clean["blocks.0.attn.hook_z"], 4)
    with intervene(bridge, dictionaries, [FeatureIntervention("attn0", g, "ablate", (-2,))]):
        _, ablated = capture(bridge, tokens, ["blocks.0.hook_attn_out"])
    contribution = clean["blocks.0.hook_attn_out"] - ablated["blocks.0.hook_attn_out"]
    assert contribution[:, [0, 1, 2, 3, 5]].abs().max() < ATOL and contribution[:, 4].abs().max() > 1e-3
    with intervene(bridge, dictionaries, [FeatureIntervention("mlp1", 1, "steer", (-2,), 0.7)]):
        _, steered = capture(bridge, tokens, names)
        with grab_and_delete(bridge, attn0, g, -2, layer=2):
            _, both = capture(bridge, tokens, names)
    torch.testing.assert_close(both["ln_final.hook_in"] - steered["ln_final.hook_in"], -contribution, atol=ATOL,
                               rtol=0)
    torch.testing.assert_close(both["blocks.1.hook_in"], steered["blocks.1.hook_in"], atol=0, rtol=0)


def test_intervention_effects_patterns_react_only_downstream(bridge, dictionaries, tokens):
    labels = torch.tensor([[1, 2], [3, 4], [5, 6]])
    heads = [(0, 1), (1, 2), (1, 0)]
    clean_logits, clean = capture(bridge, tokens, ["blocks.1.attn.hook_pattern", "blocks.0.mlp.hook_in"])
    f = most_active(dictionaries["mlp0"], clean["blocks.0.mlp.hook_in"], 3)
    summary, patterns = intervention_effects(bridge, tokens, labels, dictionaries,
                                             [dict(dictionary="mlp0", feature=f, positions=[1, 3])], heads,
                                             batch_size=2)
    metric = summary[summary.quantity == "logit_diff"]
    last = clean_logits[:, -1]
    np.testing.assert_allclose(metric.before, (last[:, [1, 3, 5]] - last[:, [2, 4, 6]]).numpy().diagonal(), atol=1e-9)
    assert (metric.change.abs() > 0).all()
    assert summary.attrs["mean_change"] == pytest.approx(metric.change.mean())
    change = summary[summary.quantity == "pattern_change"].set_index(["layer", "head", "prompt"]).change.sort_index()
    assert len(change) == 9 and (change.loc[0] == 0).all() and (change.loc[1] > 0).all()
    assert len(patterns) == 3 * 3 * 21  # prompts · heads · causal (query, key) pairs of 6 tokens
    head2 = patterns[(patterns.layer == 1) & (patterns["head"] == 2)].sort_values(["prompt", "query", "key"])
    pattern = clean["blocks.1.attn.hook_pattern"][:, 2]  # [b, q, k]
    query, key = np.tril_indices(6)
    np.testing.assert_allclose(head2.before, pattern[:, query, key].flatten().numpy(), atol=1e-12)
    last_rows = head2[head2["query"] == 5]
    mean_abs = (last_rows.after - last_rows.before).abs().groupby(last_rows.prompt).sum() / 6
    np.testing.assert_allclose(change.loc[(1, 2)].to_numpy(), mean_abs.to_numpy(), atol=1e-12)

    later, _ = intervention_effects(bridge, tokens, labels, dictionaries,
                                    [FeatureIntervention("mlp1", 0, "steer", None, 5.0)], heads, metric="kl")
    assert (later[later.quantity == "pattern_change"].change == 0).all()
    assert (later[later.quantity == "kl"].after > 0).all() and (later[later.quantity == "kl"].before == 0).all()


@pytest.mark.parametrize("spec, field", [
    (dict(dictionary="mlp1", feature=3, colour="red"), "colour"),
    (dict(dictionary="resid1", feature=3), "dictionary"),
    (dict(dictionary="mlp1", feature=-1), "feature"),
    (dict(dictionary="mlp1", feature="3"), "feature"),
    (dict(dictionary="mlp1", feature=3, mode="zero"), "mode"),
    (dict(dictionary="mlp1", feature=3, mode="set"), "value"),
    (dict(dictionary="mlp1", feature=3, mode="steer", value="big"), "value"),
    (dict(dictionary="mlp1", feature=3, mode="ablate", value=2.0), "value"),
    (dict(dictionary="mlp1", feature=3, positions="last"), "positions"),
    (dict(dictionary="mlp1", feature=3, positions=[]), "positions"),
    (dict(feature=3), "dictionary"),
    ("mlp1:3", "mapping"),
])
def test_bad_configs_raise_one_line_errors(spec, field):
    with pytest.raises(ValueError, match=field) as error:
        interventions_from_config([spec])
    assert "\n" not in str(error.value)


def test_config_entries_become_frozen_interventions():
    (single,) = interventions_from_config([dict(dictionary="attn0", feature=2, mode="set", value=1, positions=-1)])
    assert single == FeatureIntervention("attn0", 2, "set", (-1,), 1.0) and single.positions == (-1,)
    with pytest.raises(AttributeError):
        single.feature = 3


@pytest.mark.parametrize("interventions, field", [
    ([dict(dictionary="mlp3", feature=1)], "dictionaries"),
    ([dict(dictionary="mlp0", feature=N_FEATURES)], "feature"),
    ([dict(dictionary="mlp0", feature=1, positions=[6])], "positions"),
    ([dict(dictionary="mlp0", feature=1, positions=[-1]), dict(dictionary="mlp0", feature=1, positions=[5])],
     "share a position"),
])
def test_interventions_that_do_not_fit_the_model_raise(bridge, dictionaries, tokens, interventions, field):
    with pytest.raises(ValueError, match=field):
        with intervene(bridge, dictionaries, interventions):
            bridge(tokens)


def test_grab_and_delete_needs_a_later_layer(bridge, dictionaries):
    with pytest.raises(ValueError, match="layer"):
        with grab_and_delete(bridge, dictionaries["mlp1"], 0, -1, layer=1):
            pass
