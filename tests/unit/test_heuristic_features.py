"""Heuristics as features: activations and direct logits equal independent computations on the toy model, a
planted heuristic feature is classified and its shuffle is not, feature knockouts equal a hand-made hook, and the
comparison with neurons counts what hand-made tables say."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from circuitflow.arithmetic import answers as true_answers
from circuitflow.arithmetic import legal_pairs
from circuitflow.features.dictionary import DictionaryInfo, SparseDictionary, hook_names
from circuitflow.features.heuristic_features import (
    ablated_features_correct,
    answer_logits,
    classify_feature_activations,
    classify_features,
    compare_with_neurons,
    direct_logits,
    feature_activations,
    feature_importance,
    feature_index,
    knockout_comparison,
    neuron_splits,
)
from circuitflow.heuristics import HeuristicSpec
from circuitflow.models import load_bridge, load_tokenizer

TEXTS = ["3+4=", "12+5=", "1+2+3=", "7+2=", "10+11="]  # two token lengths, interleaved


def random_dictionary(site: str, layer: int, n_features: int = 16, seed: int = 0, scale: float = 0.5,
                      activation: str = "relu", k: int = 0) -> SparseDictionary:
    d = SparseDictionary(DictionaryInfo(site, layer, activation, k), 32, 32, n_features, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (d.W_enc, d.W_dec, d.b_enc):
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return d


@pytest.fixture(scope="module")
def toy(toy_handle):
    return load_bridge(toy_handle, device="cpu", dtype="float64"), load_tokenizer(toy_handle)


@pytest.fixture(scope="module")
def dictionaries():
    return [random_dictionary("mlp", 0, seed=0), random_dictionary("attn", 1, seed=1, activation="topk", k=4),
            random_dictionary("mlp", 1, seed=2)]


def test_feature_activations_equal_an_independent_encode(toy, dictionaries):
    bridge, tokenizer = toy
    acts, index = feature_activations(bridge, tokenizer, TEXTS, dictionaries, batch_size=2)
    assert acts.shape == (48, len(TEXTS)) and index["dictionary"].tolist() == ["mlp0"] * 16 + ["attn1"] * 16 + [
        "mlp1"] * 16
    assert index["feature"].tolist() == list(range(16)) * 3 and (acts > 0).any()
    for p, text in enumerate(TEXTS):  # one prompt at a time, each hook captured and encoded by hand
        store = {}
        hooks = [(hook_names(d.info)[0], partial(lambda name, t, hook: store.__setitem__(name, t.clone()), d.info.name))
                 for d in dictionaries]
        with bridge.hooks(fwd_hooks=hooks):
            bridge(torch.tensor([tokenizer(text)["input_ids"]]))
        for i, d in enumerate(dictionaries):
            x = store[d.info.name][0, -1].reshape(-1)  # hook_z [heads, d_head] flattened head by head
            pre = x @ d.W_enc + d.b_enc
            expected = torch.relu(pre)
            if d.info.activation == "topk":
                expected = torch.where(expected >= expected.topk(4).values[-1], expected, 0)
            assert acts[16 * i : 16 * (i + 1), p].double() == pytest.approx(expected.detach(), abs=1e-5)


def test_direct_logits_equal_the_decoder_through_the_output_projection_and_unembedding(toy, dictionaries):
    bridge, _ = toy
    hf = bridge.original_model
    token_ids = torch.tensor([3, 7, 12])
    w_u = hf.get_output_embeddings().weight[token_ids].T  # [d_model, T]
    dense = hf.gpt_neox.layers[1].attention.dense.weight  # [d_model, n_heads * d_head]
    expected = torch.cat([dictionaries[0].W_dec @ w_u, dictionaries[1].W_dec @ dense.T @ w_u,
                          dictionaries[2].W_dec @ w_u])
    assert direct_logits(bridge, dictionaries, token_ids).double() == pytest.approx(expected.detach(), abs=1e-5)
    answer_tokens = np.array([12, 3, 3, 7])
    per_prompt = answer_logits(bridge, dictionaries, answer_tokens)
    assert torch.equal(per_prompt, direct_logits(bridge, dictionaries, torch.from_numpy(answer_tokens)))


def test_feature_importance_keeps_the_top_n_per_dictionary_by_direct_logit_attribution():
    index = feature_index([random_dictionary("mlp", 0, 3), random_dictionary("attn", 0, 2)])
    acts = torch.tensor([[1.0, 2.0], [0.0, 5.0], [3.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    logits = torch.tensor([[1.0, -1.0], [1.0, 0.1], [-1.0, 1.0], [4.0, 4.0], [0.5, 0.5]])
    # |a · logit| means: mlp0 [1.5, 0.25, 1.5], attn0 [4, 1]; ties by feature
    chosen = feature_importance(acts, logits, index, top_n=2)
    assert chosen[["dictionary", "feature", "rank"]].values.tolist() == [["mlp0", 0, 0], ["mlp0", 2, 1],
                                                                         ["attn0", 0, 0], ["attn0", 1, 1]]
    assert chosen["importance"].tolist() == pytest.approx([1.5, 1.5, 4, 1]) and chosen["row"].tolist() == [0, 2, 3, 4]
    with pytest.raises(ValueError, match="top_n"):
        feature_importance(acts, logits, index, top_n=0)


def grid(top: int = 30) -> pd.DataFrame:
    pairs = legal_pairs("add", top, top)
    return pd.DataFrame(dict(op1=pairs[:, 0], op2=pairs[:, 1], answer=true_answers("add", pairs[:, 0], pairs[:, 1])))


def test_a_planted_heuristic_feature_is_classified_and_its_shuffle_is_not():
    answers = grid()
    gen = torch.Generator().manual_seed(0)
    planted = torch.from_numpy(answers["op1"].to_numpy() % 5 == 0).double() + 0.01 * torch.rand(len(answers),
                                                                                                 generator=gen)
    # feature 0 fires on op1 ≡ 0 mod 5, feature 1 is its shuffle, feature 2 fires on results ≡ 3 mod 7 (a result
    # heuristic, ranked by activation × direct logit; the null shuffles activations, so it must come from them)
    on_result = torch.from_numpy(answers["answer"].to_numpy() % 7 == 3).double()
    acts = torch.stack([planted, planted[torch.randperm(len(answers), generator=gen)],
                        on_result + 0.01 * torch.rand(len(answers), generator=gen, dtype=torch.double)], 1)  # [P, 3]
    logits = 1 + 0.1 * torch.rand(answers["answer"].max() + 1, generator=gen, dtype=torch.double)[answers["answer"]]
    logits = logits[:, None].expand(-1, 3)  # a direct logit per result, as a feature's would be
    chosen = pd.DataFrame(dict(dictionary=["mlp3", "attn2", "attn2"], site=["mlp", "attn", "attn"], layer=[3, 2, 2],
                               feature=[7, 1, 4], importance=[2.0, 1.0, 0.5], rank=[0, 0, 1]))
    found = classify_feature_activations(acts, logits, chosen, answers, null_permutations=9)
    table = found.table
    implemented = table[table["matched"] & table["beats_null"]]
    found_by = implemented.groupby(["dictionary", "feature"])["heuristic"].agg(set).to_dict()
    assert found_by.keys() == {("mlp3", 7), ("attn2", 4)}  # not the shuffle
    # the planted rules, and finer ones inside them that the noise happens to rank first (op1 ≡ 0 mod 10, the
    # results of the largest direct logit)
    assert "op1_mod_0mod5" in found_by["mlp3", 7] and all(h.startswith("op1_") for h in found_by["mlp3", 7])
    assert "result_mod_3mod7" in found_by["attn2", 4] and all(h.startswith("result") for h in found_by["attn2", 4])
    assert set(table["dictionary"]) == {"mlp3", "attn2"}
    assert (table.loc[table["dictionary"] == "attn2", "layer"] == 2).all()  # names restored from ``chosen``
    maps = found.maps(answers, 1)
    assert len(maps) == len(answers) and maps["best_heuristic"].eq("op1_mod_0mod5").all()
    assert maps["activation"].to_numpy() == pytest.approx(planted.numpy(), abs=1e-6)
    assert (maps["op1"].to_numpy() == answers["op1"].to_numpy()).all()


def test_knocking_out_features_subtracts_their_decoder_contribution(toy, dictionaries):
    bridge, _ = toy
    big = [random_dictionary(d.info.site, d.info.layer, seed=i, scale=2.0, activation=d.info.activation, k=d.info.k)
           for i, d in enumerate(dictionaries)]
    features = pd.DataFrame(dict(dictionary=["mlp0", "attn1", "mlp1", "mlp1"], feature=[3, 0, 5, 9]))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (6, 5), generator=gen)
    ablate = torch.rand(6, 4, generator=gen) < 0.6
    plain = bridge(tokens)[:, -1].argmax(-1)
    by_hand = []
    for row in range(6):
        off = features[ablate[row].numpy()]
        store = {}

        def keep(name, tensor, hook):
            store[name] = tensor.flatten(-2) if name.startswith("attn") else tensor

        def remove(d, tensor, hook):
            for f in off.loc[off["dictionary"] == d.info.name, "feature"]:
                a = d.encode(store[d.info.name])[..., f : f + 1]
                tensor = tensor - (a * d.W_dec[f]).view(tensor.shape)
            return tensor

        hooks = [hook for d in big for hook in ((hook_names(d.info)[0], partial(keep, d.info.name)),
                                                (hook_names(d.info)[1], partial(remove, d)))]
        with bridge.hooks(fwd_hooks=hooks):
            by_hand.append(bridge(tokens[row : row + 1])[0, -1].argmax())
    by_hand = torch.stack(by_hand)
    assert (by_hand != plain).any()  # the knockouts matter, so the comparison below can fail
    assert ablated_features_correct(bridge, tokens, by_hand, ablate, features, big, batch_size=4).all()
    zero = [random_dictionary(d.info.site, d.info.layer, seed=i, scale=2.0) for i, d in enumerate(dictionaries)]
    for d in zero:
        torch.nn.init.zeros_(d.W_dec)
    assert ablated_features_correct(bridge, tokens, plain, torch.ones(6, 4, dtype=torch.bool), features, zero).all()
    with pytest.raises(ValueError, match="no dictionary named"):
        ablated_features_correct(bridge, tokens, plain, ablate, features, big[:1])


def unit_table(rows, keys):
    return pd.DataFrame([dict(zip(keys + ["heuristic", "matched", "beats_null"], row)) for row in rows])


def test_compare_with_neurons_and_neuron_splits_count_hand_made_tables(toy):
    bridge, _ = toy
    features = unit_table([("mlp1", "mlp", 1, 0, "h1", True, True), ("mlp1", "mlp", 1, 0, "h2", True, True),
                           ("mlp1", "mlp", 1, 1, "h1", True, True), ("mlp1", "mlp", 1, 2, "h1", True, False),
                           ("mlp1", "mlp", 1, 3, "h3", False, False), ("attn1", "attn", 1, 0, "h1", True, True),
                           ("mlp0", "mlp", 0, 4, "h1", True, True)], ["dictionary", "site", "layer", "feature"])
    neurons = unit_table([(1, 5, "h1", True, True), (1, 5, "h2", True, True), (1, 6, "h2", True, True),
                          (1, 7, "h4", True, False), (0, 2, "h3", True, True)], ["layer", "neuron"])
    summary = compare_with_neurons(features, neurons, operator="add").iloc[0]
    assert summary["operator"] == "add" and summary["n_features"] == 6 and summary["n_heuristic_features"] == 4
    assert summary["share_features"] == pytest.approx(4 / 6) and summary["n_heuristics_features"] == 2
    assert summary["n_neurons"] == 4 and summary["n_heuristic_neurons"] == 3 and summary["n_heuristics_neurons"] == 3
    transcoder = random_dictionary("mlp", 1, seed=5)
    w_out = bridge.original_model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight  # [d_model, d_mlp]
    with torch.no_grad():
        transcoder.W_dec[0] = 3 * w_out[:, 5]
        transcoder.W_dec[1] = -w_out[:, 5]
        transcoder.W_dec[2] = w_out[:, 5] + 0.01 * transcoder.W_dec[2]
    splits = neuron_splits(features, neurons, bridge, [transcoder]).set_index(["layer", "neuron"])
    assert splits["heuristics"].to_dict() == {(0, 2): "h3", (1, 5): "h1,h2", (1, 6): "h2"}
    # neuron (1, 5): features 0 and 1 implement h1 or h2 (feature 2 not above its null, attn1 and mlp0 elsewhere)
    assert splits["n_features_same_heuristic"].to_dict() == {(0, 2): 0, (1, 5): 2, (1, 6): 1}
    cos = torch.nn.functional.cosine_similarity(transcoder.W_dec, w_out[:, [5, 6]].T[:, None], dim=-1)  # [2, F]
    assert splits.loc[(1, 5), "n_features_cosine"] == (cos[0] >= 0.5).sum() >= 2
    assert splits.loc[(1, 6), "n_features_cosine"] == (cos[1] >= 0.5).sum()
    assert np.isnan(splits.loc[(0, 2), "n_features_cosine"])  # no transcoder for MLP 0


def test_the_feature_stage_and_knockout_comparison_on_the_toy_model(toy, toy_handle, dictionaries):
    from circuitflow.circuits import Tracer
    from circuitflow.heuristics.analysis import Classified
    from circuitflow.heuristics.matching import classify, neuron_activations, value_logits
    from circuitflow.models import load_hf_model
    from circuitflow.prompts import PromptConfig, evaluate_operator

    bridge, tokenizer = toy
    answers = evaluate_operator(load_hf_model(toy_handle, "cpu"), tokenizer, "add", PromptConfig(operand_max=12), 12)
    spec = HeuristicSpec(range_sizes=(4,), moduli=(2, 3), min_prompts=3, max_coverage=0.5)
    found = classify_features(bridge, tokenizer, answers, dictionaries, 4, spec=spec, null_permutations=3)
    assert found.chosen.groupby("dictionary").size().tolist() == [4, 4, 4]
    assert set(found.table["dictionary"]) <= {"mlp0", "attn1", "mlp1"} and found.table["score"].between(0, 1).all()
    tracer = Tracer(bridge)
    ids = torch.stack([torch.ones(64, dtype=torch.long), torch.arange(64)], 1)
    acts, _ = neuron_activations(tracer, tokenizer, answers["prompt"].tolist(), ids)
    tokens, token_index = np.unique(answers["answer_token"].to_numpy(), return_inverse=True)
    direct = value_logits(tracer, ids, torch.from_numpy(tokens))[:, torch.from_numpy(token_index)].T
    op1, op2, result = (answers[c].to_numpy() for c in ("op1", "op2", "answer"))
    neurons = Classified(pd.DataFrame(dict(layer=1, neuron=np.arange(64), importance=0.0, rank=np.arange(64))),
                         classify(acts, direct, ids, op1, op2, result, spec=spec, null_permutations=3), acts,
                         answers["correct"].to_numpy())
    table = knockout_comparison(bridge, tokenizer, answers, found, neurons, dictionaries, min_features=1,
                                min_neurons=1, max_prompts=10, seed=0)
    assert len(table) and list(table.columns[:4]) == ["heuristic", "n_features", "n_neurons", "n_prompts"]
    drops = table.filter(like="drop_")
    assert ((drops >= 0) & (drops <= 1)).all().all() and (table["n_prompts"] <= 10).all()
    assert table["specificity_features"].to_numpy() == pytest.approx(
        (table["drop_associated_features"] - table["drop_other_features"]).to_numpy())
