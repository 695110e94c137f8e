"""The paper's mean-ablation circuits: a layer whose neurons carry no signal is kept whole rather than cut to an
arbitrary index block, and the mean dataset carries exactly the prompt set's few-shot prefix. (That the full and
empty circuits are faithfulness 1 and 0 is tested in test_localization.py.)"""

from __future__ import annotations

import re
from dataclasses import replace

import pandas as pd
import pytest
import torch

from circuitflow.circuits import Tracer
from circuitflow.localization.mean_ablation import (
    CircuitMasks,
    faithfulness_table,
    no_signal_layers,
    paper_circuits,
    paper_faithfulness,
    site_means,
)
from circuitflow.models import ModelHandle, load_bridge
from tests.conftest import TINY_ARCHS, save_tiny_model
from tests.unit.test_circuits import random_pairs


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tracer(request, tmp_path_factory):
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    return Tracer(load_bridge(ModelHandle("tiny", str(path)), device="cpu", dtype="float64"))


def test_no_signal_layers_are_the_flat_ones():
    importance = torch.tensor([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [1.0, 0.0, 3.0], [1e-3, 0.0, 0.0]])
    assert no_signal_layers(importance).tolist() == [True, True, False, False]


def test_a_layer_without_signal_is_kept_whole_and_the_table_says_so(tracer):
    """Planted: every layer-0 neuron has importance exactly 0 (as MLP 0 of a parallel block at the last position),
    layer 1 a known order; the heuristics layer is 0. The top-k circuit must keep layer 0 whole and take layer 1's
    top k, i.e. equal the hand-built circuit, and differ from taking layer 0's "top" k (an index block)."""
    a, k = tracer.anatomy, 4
    gen = torch.Generator().manual_seed(1)
    signal = torch.randn(a.d_mlp, generator=gen).double()
    importance = torch.cat([torch.zeros(a.d_mlp, dtype=torch.float64), signal])
    neurons = pd.DataFrame(dict(layer=[0] * a.d_mlp + [1] * a.d_mlp, neuron=list(range(a.d_mlp)) * 2,
                                importance=importance.numpy())).sample(frac=1.0, random_state=0)  # any row order
    ie_maps = pd.DataFrame(dict(component="head", layer=[0, 1], head=[1, 2], position="last", ie_median=[2.0, 1.0]))
    batches = [random_pairs(4, seed=4)]
    mean_tokens = [random_pairs(8, seed=5).clean, random_pairs(8, seed=6).clean]
    table = paper_faithfulness(tracer, batches, mean_tokens, ie_maps, neurons, probes=pd.DataFrame(), n_heads=2,
                               first_layer=0, probe_threshold=0.8, ks=[k], random_seeds=[0])
    assert set(table["layer_selection"]) == {"m0 all (no signal); m1 top-k"}
    assert set(table["heads"]) == {"a0.h1, a1.h2"}  # the two planted heads, by IE

    top_layer1 = sorted(range(a.d_mlp), key=lambda n: -float(signal[n]))[:k]  # naive top-k
    heads = torch.zeros(a.n_layers, a.n_heads, dtype=torch.bool)
    heads[0, 1] = heads[1, 2] = True
    by_hand, index_block = torch.zeros(2, a.n_layers, a.d_mlp, dtype=torch.bool)
    by_hand[0], by_hand[1, top_layer1] = True, True
    index_block[0, :k], index_block[1, top_layer1] = True, True
    masks = CircuitMasks(torch.stack([torch.ones_like(heads), torch.zeros_like(heads), heads, heads]),
                         torch.stack([torch.ones_like(by_hand), torch.zeros_like(by_hand), by_hand, index_block]),
                         [dict(circuit=c, k=k, seed=-1) for c in ("full", "empty", "by_hand", "index_block")])
    expected = faithfulness_table(tracer, batches, *site_means(tracer, mean_tokens), masks).set_index("circuit")
    found = table[(table["circuit"] == "top") & (table["k"] == k)]["faithfulness_of_means"].item()
    assert found == pytest.approx(expected.loc["by_hand", "faithfulness_of_means"], abs=1e-10)
    assert abs(found - expected.loc["index_block", "faithfulness_of_means"]) > 1e-6
    rank = torch.stack([torch.zeros(a.d_mlp, dtype=torch.long), signal.argsort(descending=True)])
    circuits = paper_circuits(a.n_heads, [], rank, torch.tensor([True, False]), ks=[k], random_seeds=[0, 1])
    for keep, label in zip(circuits.neuron_keep, circuits.labels):  # random circuits keep layer 0 whole too
        assert keep[0].all() == (label["circuit"] != "empty") and keep[1].sum() == label["k"]


def test_the_mean_dataset_carries_exactly_the_prompt_sets_few_shot_prefix(toy_handle):
    from circuitflow.models import load_hf_model, load_tokenizer
    from circuitflow.prompts import (PromptConfig, all_pair_prompts, build_prompt_set, few_shot_prefix, prompt_prefix,
                                     resolve_answer_max)

    tokenizer = load_tokenizer(toy_handle)
    cfg = PromptConfig(operand_max=12, answer_max=11, k=2, few_shot=3, seed=5)  # not seed 0, not operand_max
    prompts, _ = build_prompt_set(load_hf_model(toy_handle, "cpu"), tokenizer, "add", cfg,
                                  resolve_answer_max(tokenizer, cfg))
    first = prompts.iloc[0]
    prefix = first["prompt"][: -len(f"{first['op1']}+{first['op2']}=")]  # naive: strip the question
    assert prefix.count(";") == 3 and all(text.startswith(prefix) for text in prompts["prompt"])
    texts = all_pair_prompts(12, prompt_prefix(prompts))
    assert len(texts) == 4 * 13 * 13 and all(text.startswith(prefix) for text in texts)
    assert {text[len(prefix):] for text in texts} >= {"12/0=", "0-12=", "7*7=", "3+4="}
    assert all(int(r) <= 11 for r in re.findall(r"=(\d+);", prefix))  # the prompt stage's answer range
    assert few_shot_prefix("add", replace(cfg, seed=0), 12) != prefix  # what the stage used to rebuild


def test_prompt_prefix_refuses_a_table_with_mixed_prefixes():
    from circuitflow.prompts import PromptError, prompt_prefix

    table = pd.DataFrame(dict(operator="add", op1=[1, 2], op2=[3, 4], prompt=["5+5=10;1+3=", "2+4="]))
    with pytest.raises(PromptError, match="prompts table"):
        prompt_prefix(table)
    assert prompt_prefix(table.iloc[:1]) == "5+5=10;"
