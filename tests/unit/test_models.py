"""Loading: every architecture goes through one path, and the bridge's logits equal the HF model's."""

from __future__ import annotations

import json

import pytest
import torch

from circuitflow.models import ModelHandle, load_bridge, load_hf_model, load_tokenizer, max_single_token_number
from circuitflow.models.download import DownloadError, download_snapshot
from circuitflow.toy import build_tokenizer
from tests.conftest import TINY_ARCHS, save_tiny_model


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tiny_model_dir(request, tmp_path_factory):
    return save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))


def test_bridge_logits_equal_hf_logits(tiny_model_dir):
    handle = ModelHandle("tiny", str(tiny_model_dir))
    hf = load_hf_model(handle, device="cpu")
    tokens = load_tokenizer(handle)(["3+4=", "12-5=", "6*2="])["input_ids"]
    tokens = torch.tensor(tokens)
    expected = hf(tokens).logits
    bridge = load_bridge(handle, device="cpu")
    got = bridge(tokens)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_largest_single_token_number():
    assert max_single_token_number(build_tokenizer(37)) == 37


def test_offline_download_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(DownloadError) as err:
        download_snapshot("EleutherAI/pythia-14m", "step1000", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "EleutherAI/pythia-14m@step1000" in message and "\n" not in message


def test_handle_roundtrip(tmp_path):
    from circuitflow.models import read_handle, write_handle

    (tmp_path / "step3").mkdir()
    handle = ModelHandle("m", str(tmp_path / "step3"), "step3", "toy", {"step": 3})
    write_handle(handle, tmp_path / "model.json")
    assert read_handle(tmp_path / "model.json") == handle
    assert json.loads((tmp_path / "model.json").read_text())["revision"] == "step3"


def test_a_bridge_over_a_device_map_gives_the_single_device_scores(tmp_path):
    """``device_map`` goes to Hugging Face and the bridge wraps the model as placed (TransformerLens refuses a map
    next to ``hf_model``). On a CPU-only machine every module lands on the CPU: the split across devices itself is
    checked by benchmarks/gpu_check."""
    from circuitflow.circuits import Tracer, attribute
    from circuitflow.metrics import logit_diff
    from tests.unit.test_circuits import random_pairs

    handle = ModelHandle("tiny", str(save_tiny_model("llama_gqa", tmp_path / "m")))
    placed = load_bridge(handle, dtype="float64", device_map="auto", max_memory={"cpu": "1GiB"})
    single = load_bridge(handle, device="cpu", dtype="float64")
    batches = [random_pairs(3)]
    graphs = [attribute(b, batches, logit_diff, "EAP-IG-inputs", ig_steps=2, tracer=Tracer(b), progress=False)
              for b in (placed, single)]
    torch.testing.assert_close(graphs[0].scores, graphs[1].scores, rtol=1e-9, atol=1e-12)


def test_a_cpu_gpu_split_needs_consent():
    class Placed(torch.nn.Module):
        hf_device_map = {"model.embed_tokens": 0, "model.layers.0": "cpu"}

    with pytest.raises(ValueError, match="allow_cpu_gpu_split=True") as err:
        load_bridge(ModelHandle("big", "/nowhere"), hf_model=Placed())
    assert "\n" not in str(err.value)
