"""Heuristic classification and knockouts: known inputs give known masks and scores, planted heuristics are found
and noise is not, and the batched knockouts equal one-prompt-at-a-time ablation."""

from __future__ import annotations

import re
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from circuitflow.arithmetic import answers, legal_pairs
from circuitflow.circuits import Tracer
from circuitflow.heuristics import (
    HeuristicSpec,
    ablated_correct,
    classify,
    digit_patterns,
    disjoint_groups,
    heuristic_set,
    match_scores,
    neuron_activations,
    prompt_knockout,
    scorer,
    split_halves,
    value_logits,
)
from circuitflow.heuristics.knockout import random_control
from circuitflow.models import ModelHandle, load_bridge
from tests.conftest import TINY_ARCHS, save_tiny_model


def grid(op: str = "add", top: int = 40, answer_max: int | None = None):
    pairs = legal_pairs(op, top, top if answer_max is None else answer_max)
    return pairs[:, 0], pairs[:, 1], answers(op, pairs[:, 0], pairs[:, 1])


def test_heuristic_masks_are_the_rules_they_name():
    op1, op2, result = grid()
    found = heuristic_set(op1, op2, result, HeuristicSpec(max_coverage=1.0, min_prompts=1))
    masks = dict(zip(found.names, found.masks))
    assert (masks["op1_range_[10,20)"] == ((op1 >= 10) & (op1 < 20))).all()
    assert (masks["both_range_[5,15)"] == ((op1 >= 5) & (op1 < 15) & (op2 >= 5) & (op2 < 15))).all()
    assert (masks["op2_mod_3mod7"] == (op2 % 7 == 3)).all()
    assert (masks["both_mod_1mod2"] == ((op1 % 2 == 1) & (op2 % 2 == 1))).all()
    assert (masks["result_mod_0mod5"] == (result % 5 == 0)).all()
    assert (masks["result_value_17"] == (result == 17)).all()
    assert (masks["op1_value_3"] == (op1 == 3)).all()
    assert (masks["same_operand"] == (op1 == op2)).all()
    assert "op1_range_[30,40)" in masks and "op1_range_[35,45)" not in masks  # windows stay inside 0..top
    assert set(found.kinds) == {"operand", "result"}
    assert all(kind == ("result" if name.startswith("result") else "operand")
               for name, kind in zip(found.names, found.kinds))


def test_coverage_limits_drop_heuristics_that_match_by_chance():
    op1, op2, result = grid()
    found = heuristic_set(op1, op2, result, HeuristicSpec(max_coverage=0.3, min_prompts=5))
    coverage = found.masks.mean(1)
    assert coverage.max() <= 0.3 and found.masks.sum(1).min() >= 5
    assert "op1_mod_0mod2" not in found.names  # half of the prompts
    assert "result_value_0" not in found.names  # one prompt: 0 + 0


def test_heuristics_fall_into_few_groups_of_disjoint_ones():
    op1, op2, result = grid()
    found = heuristic_set(op1, op2, result)
    for group in np.unique(found.groups):
        assert found.masks[found.groups == group].sum(0).max() == 1  # no prompt in two heuristics of a group
    assert len(np.unique(found.groups)) < len(found) / 4  # residues of a modulus, values, ranges of one width...
    assert (disjoint_groups(np.eye(3, dtype=bool)) == 0).all()
    assert disjoint_groups(np.ones((3, 4), dtype=bool)).tolist() == [0, 1, 2]


def test_digit_patterns_skip_ranges_and_last_digit_alone():
    values = np.arange(1000)
    patterns = digit_patterns(values, 999)
    assert (patterns[".3."] == ((values // 10) % 10 == 3)).all()
    assert (patterns["1.5"] == ((values // 100 == 1) & (values % 10 == 5))).all()
    assert (patterns[".42"] == (values % 100 == 42)).all()
    assert not [name for name in patterns if re.fullmatch(r"\d+\.+", name)]  # "12.", "1..": ranges
    assert not [name for name in patterns if re.fullmatch(r"\.+\d", name)]  # "..5": x mod 10
    assert digit_patterns(np.arange(100), 99) == {}  # two digits: every pattern is a range or a residue


def test_match_score_is_the_overlap_of_the_top_k_with_the_heuristic():
    values = torch.arange(10, 0, -1).double()[None]  # prompt 0 ranks first
    masks = torch.zeros(4, 10, dtype=torch.bool)
    masks[0, :3] = True  # exactly the top 3
    masks[1, 7:] = True  # the bottom 3
    masks[2, [0, 1, 5]] = True  # 2 of the top 3
    masks[3, [0, 9]] = True  # 1 of the top 2
    assert match_scores(values, masks)[0].tolist() == pytest.approx([1.0, 0.0, 2 / 3, 0.5])


def test_match_scores_equal_a_loop_over_neurons_and_heuristics():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(7, 50, generator=gen).double()
    masks = torch.rand(30, 50, generator=gen) < torch.rand(30, 1, generator=gen)
    masks[:, 0] = True  # no empty heuristic
    fast = match_scores(values, masks)
    for n in range(7):
        order = values[n].argsort(descending=True)
        for h in range(30):
            k = int(masks[h].sum())
            assert fast[n, h] == pytest.approx(float(masks[h, order[:k]].sum()) / k)


def planted(op1, op2, result, gen):
    """Activations [P, 4]: op1 in [20, 30); result ≡ 3 (mod 7); result in {6, 30}; noise."""
    noise = torch.randn(len(op1), 4, generator=gen).double() * 0.05
    acts = torch.stack([torch.from_numpy(((op1 >= 20) & (op1 < 30)).astype(float)),
                        torch.from_numpy((result % 7 == 3).astype(float)),
                        torch.from_numpy(np.isin(result, [6, 30]).astype(float)),
                        torch.zeros(len(op1)).double()], dim=1)
    return (acts + noise).float()


def test_planted_heuristics_are_found_and_noise_is_not():
    op1, op2, result = grid()
    acts = planted(op1, op2, result, torch.Generator().manual_seed(0))
    neurons = torch.tensor([[1, 0], [1, 1], [1, 2], [1, 3]])
    found = classify(acts, torch.ones_like(acts), neurons, op1, op2, result)
    best = found.table.sort_values("score", ascending=False).drop_duplicates("neuron").set_index("neuron")
    assert best.loc[0, "heuristic"] == "op1_range_[20,30)" and best.loc[0, "score"] == pytest.approx(1.0)
    assert best.loc[1, "heuristic"] == "result_mod_3mod7" and best.loc[1, "score"] == pytest.approx(1.0)
    assert best.loc[2, "heuristic"] == "result_set_{6,30}" and best.loc[2, "score"] == pytest.approx(1.0)
    assert not found.table[found.table["neuron"] == 3]["matched"].any()  # noise matches nothing
    assert (found.masks["result_set_{6,30}"] == np.isin(result, [6, 30])).all()
    assert set(found.matches()["neuron"]) == {0, 1, 2}


def test_constant_neurons_are_not_classified_and_two_sided_finds_negative_firing():
    op1, op2, result = grid()
    acts = torch.stack([torch.full((len(op1),), 0.3),
                        -torch.from_numpy(((op2 >= 20) & (op2 < 30)).astype(np.float32))], dim=1)
    neurons = torch.tensor([[1, 0], [1, 1]])
    one_sided = classify(acts, torch.ones_like(acts), neurons, op1, op2, result)
    assert 0 not in set(one_sided.table["neuron"])  # constant: no row at all
    assert "op2_range_[20,30)" not in set(one_sided.matches()["heuristic"])
    two_sided = classify(acts, torch.ones_like(acts), neurons, op1, op2, result, two_sided=True)
    assert "op2_range_[20,30)" in set(two_sided.matches()["heuristic"])


def test_split_halves_is_seeded_and_stratified_by_result():
    result_index = torch.from_numpy(np.unique(grid("mul", 30)[2], return_inverse=True)[1])
    choose = split_halves(result_index, seed=3)
    assert torch.equal(choose, split_halves(result_index, seed=3))
    assert not torch.equal(choose, split_halves(result_index, seed=4))
    for value in result_index.unique():
        members = choose[result_index == value]
        assert abs(int(members.sum()) - int((~members).sum())) <= 1  # each result's prompts alternate
    assert abs(int(choose.sum()) - len(choose) / 2) < 0.1 * len(choose)


def naive_held_out_set(values: np.ndarray, result: np.ndarray, choose: np.ndarray, m: int, spec: HeuristicSpec):
    """(favourite values chosen by mean on the ``choose`` prompts, their score on the other prompts, chance level)."""
    means = {v: values[choose & (result == v)].mean() for v in np.unique(result[choose])}
    favourites = sorted(means, key=lambda v: -means[v])[:m]
    held_values, held_in_set = values[~choose], np.isin(result[~choose], favourites)
    k, total = int(held_in_set.sum()), int(np.isin(result, favourites).sum())
    if not (spec.min_prompts <= total <= int(spec.max_coverage * len(result))) or k == 0:
        return favourites, np.nan, np.nan
    return favourites, held_in_set[np.argsort(-held_values)[:k]].mean(), held_in_set.mean()


def naive_in_sample_set(values: np.ndarray, result: np.ndarray, m: int, spec: HeuristicSpec) -> float:
    """The old way: favourites chosen and scored on the same prompts."""
    return naive_held_out_set(np.concatenate([values, values]), np.concatenate([result, result]),
                              np.arange(2 * len(values)) < len(values), m, spec)[1]


def test_favourite_sets_are_chosen_on_other_prompts_than_they_are_scored_on():
    """Noise neurons on a grid with many rare results: chosen and scored on the same prompts their favourite sets
    score ~25 times chance; chosen on one half and scored on the other, chance (and equal to a naive computation)."""
    op1, op2, result = grid("mul", 30, 900)  # 961 prompts, 309 distinct results
    noise = torch.randn(len(result), 40, generator=torch.Generator().manual_seed(0))
    spec = HeuristicSpec()
    score = scorer(op1, op2, result, spec, seed=1)
    observed, favourites = score.scores(noise, torch.ones_like(noise))
    choose, distinct = score.choose.numpy(), np.unique(result)
    held_out, chance, in_sample = [], [], []
    for n in range(noise.shape[1]):
        values = noise[:, n].double().numpy()
        for i, m in enumerate(spec.value_set_sizes):
            chosen, found, level = naive_held_out_set(values, result, choose, m, spec)
            assert sorted(distinct[favourites[n, i, :m].numpy()]) == sorted(chosen)
            assert float(observed[n, len(score.fixed) + i]) == pytest.approx(found, nan_ok=True)
            held_out.append(found)
            chance.append(level)
            in_sample.append(naive_in_sample_set(values, result, m, spec))
    assert np.nanmean(in_sample) > 10 * np.nanmean(chance)  # the old way: matched by construction
    assert np.nanmean(held_out) < 2 * np.nanmean(chance) and np.nanmax(held_out) < 0.6


def test_a_planted_heuristic_beats_its_permutation_null_and_noise_does_not():
    op1, op2, result = grid()
    gen = torch.Generator().manual_seed(0)
    acts = torch.cat([planted(op1, op2, result, gen)[:, :3], torch.randn(len(op1), 20, generator=gen)], 1)
    neurons = torch.stack([torch.ones(23, dtype=torch.long), torch.arange(23)], 1)
    found = classify(acts, torch.ones_like(acts), neurons, op1, op2, result, null_permutations=19, seed=0)
    best = found.table.sort_values("score", ascending=False).drop_duplicates("neuron").set_index("neuron").sort_index()
    assert best.loc[:2, "beats_null"].all() and best.loc[:2, "p_value"].tolist() == pytest.approx([1 / 20] * 3)
    assert best.loc[:2, "heuristic"].tolist() == ["op1_range_[20,30)", "result_mod_3mod7", "result_set_{6,30}"]
    noise = best.loc[3:]
    assert (noise["score"] > noise["coverage"]).all()  # the best of many heuristics beats a random ranking...
    assert noise["beats_null"].mean() <= 0.25  # ...but not the shuffles (~5% by chance)
    assert noise["score"].mean() < noise["null_best"].mean()
    assert ((found.table["p_value"] > 0) & (found.table["p_value"] <= 1)).all()
    unchecked = classify(acts, torch.ones_like(acts), neurons, op1, op2, result, null_permutations=0)
    assert unchecked.table["p_value"].isna().all() and not unchecked.table["beats_null"].any()


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tracer(request, tmp_path_factory):
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    return Tracer(load_bridge(ModelHandle("tiny", str(path)), device="cpu", dtype="float64"))


def test_neuron_activations_and_value_logits_match_direct_computation(tracer):
    from circuitflow.circuits import post_activations
    from circuitflow.toy import build_tokenizer

    tokenizer = build_tokenizer(20)
    texts = ["3+4=", "12-5=", "1+2+3=", "7*2="]  # two token lengths, interleaved
    neurons = torch.tensor([[0, 5], [1, 0], [1, 63], [0, 1]])
    acts, predicted = neuron_activations(tracer, tokenizer, texts, neurons, batch_size=2)
    for row, text in enumerate(texts):
        logits, _, post = post_activations(tracer, torch.tensor([tokenizer(text)["input_ids"]]))
        expected = post[0, -1, neurons[:, 0], neurons[:, 1]]
        assert acts[row].double() == pytest.approx(expected.double(), abs=1e-6)
        assert predicted[row] == logits[0, -1].argmax()
    hf = tracer.bridge.original_model
    # [d_model, d_mlp] per layer; GPT-2's Conv1D stores the transpose of nn.Linear's weight
    # (the bridge wraps HF's modules: select the plain Linear / Conv1D leaves of each MLP's output projection)
    out_weights = [m.weight.T if type(m).__name__ == "Conv1D" else m.weight for name, m in hf.named_modules()
                   if type(m).__name__ in ("Linear", "Conv1D")
                   and re.search(r"dense_4h_to_h|down_proj|fc_out|mlp\..*c_proj", name)]
    token_ids = torch.tensor([4, 9, 20])
    expected = torch.stack([out_weights[layer][:, neuron] for layer, neuron in neurons.tolist()])
    expected = expected @ hf.get_output_embeddings().weight[token_ids].T
    assert value_logits(tracer, neurons, token_ids).double() == pytest.approx(expected.double(), abs=1e-5)


def test_batched_knockout_equals_one_prompt_at_a_time(tracer):
    gen = torch.Generator().manual_seed(0)
    a = tracer.anatomy
    tokens = torch.randint(0, 20, (6, 5), generator=gen)
    answer_tokens = torch.randint(0, 20, (6,), generator=gen)
    neurons = torch.tensor([[1, 7], [0, 3], [1, 0], [0, 60], [1, 33]])  # any order, both layers
    ablate = torch.rand(6, len(neurons), generator=gen) < 0.5
    batched = ablated_correct(tracer, tokens, answer_tokens, ablate, neurons, batch_size=4)
    for row in range(6):
        def zero(layer, tensor, hook):
            tensor = tensor.clone()
            for (n_layer, neuron), off in zip(neurons.tolist(), ablate[row].tolist()):
                if off and n_layer == layer:
                    tensor[..., neuron] = 0
            return tensor

        hooks = [(la.hooks["mlp_post"], partial(zero, layer)) for layer, la in enumerate(a.layers)]
        with tracer.bridge.hooks(fwd_hooks=hooks):
            logits = tracer.bridge(tokens[row : row + 1])
        assert bool(batched[row]) == bool(logits[0, -1].argmax() == answer_tokens[row])
    plain = tracer.bridge(tokens)[:, -1].argmax(-1) == answer_tokens
    assert torch.equal(ablated_correct(tracer, tokens, answer_tokens, torch.zeros_like(ablate), neurons), plain)


def test_random_control_matches_counts_per_layer_and_avoids_the_ablated():
    gen = torch.Generator().manual_seed(0)
    layer_of = torch.tensor([0] * 30 + [2] * 10)
    selected = torch.rand(5, 40, generator=gen) < 0.3
    control = random_control(selected, layer_of, gen)
    for layer in (0, 2):
        cols = layer_of == layer
        wanted, free = selected[:, cols].sum(1), (~selected[:, cols]).sum(1)
        assert torch.equal(control[:, cols].sum(1), torch.minimum(wanted, free))
    assert not (control & selected).any()


def test_prompt_knockout_ablates_the_neurons_of_each_prompts_heuristics(tracer):
    tokens = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(1))
    answer_tokens = tracer.bridge(tokens)[:, -1].argmax(-1)  # every prompt correct before the knockout
    masks = {"h0": np.array([True, True, False, False]), "h1": np.array([False, True, True, False])}
    matches = pd.DataFrame(dict(layer=[1, 1, 1], neuron=[3, 4, 5], heuristic=["h0", "h0", "h1"]))
    classified = pd.DataFrame(dict(layer=[1] * 10, neuron=list(range(10))))
    table = prompt_knockout(tracer, tokens, answer_tokens, masks, matches=matches, classified=classified,
                            per_layer=[1, 2, 3], seed=0)
    # prompt 0: neurons 3, 4 (h0); 1: 3, 4, 5; 2: 5; 3: none -> at most j per layer
    expected = [np.mean([1, 1, 1, 0]), np.mean([2, 2, 1, 0]), np.mean([2, 3, 1, 0])]
    assert table["neurons_ablated"].tolist() == pytest.approx(expected)
    assert table["n_prompts"].eq(4).all() and table["accuracy"].between(0.25, 1).all()  # prompt 3 keeps its answer


def toy_inputs(handle):
    from circuitflow.circuits import pair_batches
    from circuitflow.localization.neuron_scores import neuron_table
    from circuitflow.models import load_hf_model, load_tokenizer
    from circuitflow.prompts import PromptConfig, build_prompt_set

    tokenizer = load_tokenizer(handle)
    prompts, answers = build_prompt_set(load_hf_model(handle, "cpu"), tokenizer, "add", PromptConfig(operand_max=12,
                                                                                                    k=4), 12)
    tracer = Tracer(load_bridge(handle, device="cpu"))
    return tracer, tokenizer, answers, neuron_table(tracer, pair_batches(prompts, tokenizer, 8), progress=False)


def test_the_stage_on_the_toy_model_and_its_untrained_checkpoint(toy_handle, toy_dir):
    from circuitflow.heuristics.analysis import analyse_heuristics, classify_top_neurons, compare_to_final, knockouts

    tracer, tokenizer, answers, neurons = toy_inputs(toy_handle)
    spec = HeuristicSpec(range_sizes=(4,), moduli=(2, 3), min_prompts=3)
    result = analyse_heuristics(tracer, tokenizer, answers, neurons, 1, 8, spec=spec, min_neurons=1, max_prompts=20,
                                knockout_per_layer=[1, 3], map_neurons=2)
    table = result.classification
    assert set(table["layer"]) == {1} and table["neuron"].nunique() <= 8 and table["rank"].between(0, 7).all()
    assert len(result.maps) == 2 * len(answers) and result.prompt_knockout["neurons_per_layer"].tolist() == [1, 3]
    assert (result.heuristic_knockout["n_prompts"] <= 20).all()
    again = classify_top_neurons(tracer, tokenizer, answers, neurons, 1, 8, spec=spec)
    assert compare_to_final(again, table)["final_matches_present"] in (1.0, pytest.approx(float("nan"), nan_ok=True))
    assert (again.correct == answers["correct"].to_numpy()).all()  # the bridge predicts what the HF model does
    untrained = ModelHandle("toy", str(toy_dir / "checkpoints" / "step0"), "step0", "toy")
    step0 = classify_top_neurons(Tracer(load_bridge(untrained, device="cpu")), tokenizer, answers, neurons, 1, 8,
                                 spec=spec)
    step0.correct[:] = False  # as an early checkpoint that answers nothing: empty knockouts, not an error
    by_heuristic, by_prompt = knockouts(tracer, tokenizer, answers, step0, per_layer=[1, 3], max_prompts=20, seed=0,
                                        min_neurons=1)
    assert by_heuristic.empty and by_prompt["n_prompts"].eq(0).all() and by_prompt["accuracy"].isna().all()
