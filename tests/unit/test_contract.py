"""The bridge contract: refusals are one line naming what is wrong; the forward checks decide the engine's paths."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from circuitflow.circuits import Anatomy, Tracer
from circuitflow.models import ModelHandle, load_bridge, load_hf_model
from circuitflow.models.contract import BridgeContractError
from tests.conftest import TINY_ARCHS, save_tiny_model


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tiny_dir(request, tmp_path_factory):
    return save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))


def refusal(build) -> str:
    with pytest.raises(BridgeContractError) as err:
        build()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_bridge_in_compatibility_mode_is_refused(tiny_dir):
    bridge = load_bridge(ModelHandle("tiny", str(tiny_dir)), device="cpu")
    bridge.enable_compatibility_mode()
    assert "compatibility mode" in refusal(lambda: Tracer(bridge))


def test_a_plain_hf_model_is_refused(tiny_dir):
    model = load_hf_model(ModelHandle("tiny", str(tiny_dir)), device="cpu")
    assert type(model).__name__ in refusal(lambda: Tracer(model))


def test_a_missing_hook_and_a_missing_submodule_are_named(tiny_dir):
    bridge = load_bridge(ModelHandle("tiny", str(tiny_dir)), device="cpu")
    anatomy = Anatomy.from_bridge(bridge)
    anatomy.layers[1].hooks = {**anatomy.layers[1].hooks, "z": "blocks.1.attn.hook_not_there"}
    assert "'blocks.1.attn.hook_not_there'" in refusal(lambda: Tracer(bridge, anatomy))
    del bridge.blocks[1].attn.v
    assert "blocks.1 has no submodule 'attn.v'" in refusal(lambda: Tracer(bridge))


def test_last_logits_equal_the_full_forward_on_every_path(tiny_dir):
    bridge = load_bridge(ModelHandle("tiny", str(tiny_dir)), device="cpu", dtype="float64")
    tracer = Tracer(bridge)
    tokens = torch.randint(4, 25, (3, 5), generator=torch.Generator().manual_seed(0))
    full = bridge(tokens)[:, -1:]
    assert tracer.contract.logits_to_keep  # HF's logits_to_keep=1 works for every tiny architecture
    for keep in (True, False):
        tracer.contract = dataclasses.replace(tracer.contract, logits_to_keep=keep)
        torch.testing.assert_close(tracer.last_logits(tokens), full, rtol=0, atol=1e-12)


def test_the_prefix_cache_decision_does_not_depend_on_the_dtype(tiny_dir):
    """Half-precision rounding must not hide an ignored cache nor refuse a working one: bf16 decides as float64
    (whose decision test_localization checks against the naive loop)."""
    decisions = [Tracer(load_bridge(ModelHandle("tiny", str(tiny_dir)), device="cpu", dtype=dtype)).contract
                 for dtype in ("float64", "bfloat16")]
    assert decisions[0].prefix_cache == decisions[1].prefix_cache
