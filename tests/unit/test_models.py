"""Loading: every architecture goes through one path, and the bridge's logits equal the HF model's."""

from __future__ import annotations

import json

import pytest
import torch

from circuitflow.models import ModelHandle, load_bridge, load_hf_model, load_tokenizer, max_single_token_number
from circuitflow.models.download import DownloadError, download_snapshot
from circuitflow.toy import build_tokenizer


def _tiny_config(arch: str, vocab: int):
    from transformers import GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig

    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, rotary_pct=0.25, max_position_embeddings=32)
    if arch == "gptj":
        return GPTJConfig(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=32)
    if arch == "llama_gqa":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32)
    return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=32)


@pytest.fixture(scope="module", params=["gpt_neox", "gptj", "llama_gqa", "gpt2"])
def tiny_model_dir(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer(20)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_config(request.param, len(tokenizer)))
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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

    handle = ModelHandle("m", "/x", "step3", "toy", {"step": 3})
    write_handle(handle, tmp_path / "model.json")
    assert read_handle(tmp_path / "model.json") == handle
    assert json.loads((tmp_path / "model.json").read_text())["revision"] == "step3"
