"""A model that accelerate offloads (``device_map`` with ``cpu``/``disk`` entries: weights on ``meta``, loaded by a hook
for each forward) gives the engine the same numbers as the model loaded whole. On a GPU machine ``cpu`` entries are
offloaded this way (benchmarks/gpu_check.py, part ``device_map_split``); here ``disk`` entries exercise the same
mechanism without a GPU."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from benchmarks.gpu_check import split_device_map
from circuitflow.circuits import Tracer, attribute
from circuitflow.localization.attention import unembedding
from circuitflow.localization.neuron_scores import exact_neuron_effects
from circuitflow.metrics import logit_diff
from circuitflow.models import ModelHandle, load_bridge, load_hf_model
from tests.conftest import TINY_ARCHS, save_tiny_model
from tests.unit.test_circuits import random_pairs


@pytest.fixture(scope="module", params=TINY_ARCHS)
def bridges(request, tmp_path_factory):
    """(whole, offloaded): the second half of the layers, the final norm and (where not tied to the input
    embedding) the unembedding on disk."""
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    handle = ModelHandle("tiny", str(path))
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        device_map = split_device_map(AutoModelForCausalLM.from_config(config), "cpu", "disk")
    if config.tie_word_embeddings:  # tied weights share a device, as accelerate's own device maps place them
        device_map = {name: "cpu" if name == "lm_head" else d for name, d in device_map.items()}
    hf = AutoModelForCausalLM.from_pretrained(path, device_map=device_map, attn_implementation="eager",
                                              offload_folder=str(path / "offload"))
    hf.requires_grad_(False)
    assert any(p.device.type == "meta" for p in hf.parameters())  # offloaded, not merely placed
    whole = load_bridge(handle, device="cpu", hf_model=load_hf_model(handle, device="cpu"))
    return whole, load_bridge(handle, hf_model=hf, allow_cpu_gpu_split=True)


@pytest.mark.parametrize("method", ["EAP", "EAP-IG-inputs", "EAP-IG-activations"])
def test_edge_scores_of_an_offloaded_model_equal_the_whole_model(bridges, method):
    whole, offloaded = bridges
    batches = [random_pairs(3, seed=4)]
    scores = [attribute(b, batches, logit_diff, method=method, ig_steps=3, progress=False).scores
              for b in (whole, offloaded)]
    assert scores[0].abs().max() > 0
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-5, atol=1e-7)


def test_neuron_effects_and_unembedding_of_an_offloaded_model_equal_the_whole_model(bridges):
    whole, offloaded = bridges
    torch.testing.assert_close(unembedding(offloaded), unembedding(whole), rtol=0, atol=0)
    effects = [exact_neuron_effects(Tracer(b), [random_pairs(2, seed=5)], layer=1) for b in (whole, offloaded)]
    assert effects[0].abs().max() > 0
    torch.testing.assert_close(effects[1], effects[0], rtol=1e-5, atol=1e-7)
