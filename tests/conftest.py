"""Shared fixtures: tiny models built and saved locally (no downloads), and a tiny trained toy model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuitflow.models import ModelHandle
from circuitflow.recipes import ToyRecipe

@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that run workflow scripts set torch's thread count (``snakemake_job``); give the next test the count
    this one started with (training is bit-identical only at a fixed thread count)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


TINY_RECIPE = ToyRecipe(max_number=12, n_layers=2, d_model=32, n_heads=4, d_mlp=64, steps=150, lr=1e-2,
                        checkpoint_steps=(0, 150), seed=0)


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """A toy model trained for 150 steps (seconds): ``<dir>/step0`` and ``<dir>/step150`` checkpoints."""
    from circuitflow.toy import train_toy

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("toy")
    train_toy(TINY_RECIPE, out / "checkpoints", out / "log.parquet")
    return out


@pytest.fixture(scope="session")
def toy_handle(toy_dir) -> ModelHandle:
    return ModelHandle("toy", str(toy_dir / "checkpoints" / "step150"), "step150", "toy")


TINY_ARCHS = ("gpt_neox", "gptj", "llama_gqa", "gpt2")


# further families the engine's correctness is checked on (tests/unit/test_families.py), and families it refuses
MORE_FAMILIES = ("mistral", "mistral_sliding", "qwen2", "qwen3", "olmo")
REFUSED_FAMILIES = ("gemma2", "gemma3", "olmo2")


def tiny_config(arch: str, vocab: int, **overrides):
    """A 2-layer, d_model 32, 4-head config of ``arch`` (random weights; built locally, never downloaded)."""
    import transformers
    from transformers import GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig

    shape = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=32)
    grouped = dict(shape, num_key_value_heads=2)
    more = {"mistral": ("MistralConfig", dict(grouped, sliding_window=None)),
            "mistral_sliding": ("MistralConfig", dict(grouped, sliding_window=3)),  # shorter than the prompts
            "qwen2": ("Qwen2Config", grouped),  # q/k/v biases
            "qwen3": ("Qwen3Config", dict(grouped, head_dim=8)),  # q/k norms
            "olmo": ("OlmoConfig", shape),  # non-parametric layer norms
            "gemma2": ("Gemma2Config", dict(grouped, head_dim=8)),  # post-attention norms, soft-capping
            "gemma3": ("Gemma3TextConfig", dict(grouped, head_dim=8)),
            "olmo2": ("Olmo2Config", shape)}  # norms after attention and MLP only
    if arch in more:
        name, kwargs = more[arch]
        return getattr(transformers, name)(**kwargs, **overrides)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, rotary_pct=0.25, max_position_embeddings=32, **overrides)
    if arch == "gptj":
        return GPTJConfig(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=32, **overrides)
    if arch == "llama_gqa":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           **{"num_key_value_heads": 2, **overrides}, intermediate_size=64, max_position_embeddings=32)
    return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=32, **overrides)


def save_tiny_model(arch: str, path: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random ``arch`` model with the toy tokenizer (numbers 0..20) to ``path``."""
    from transformers import AutoModelForCausalLM

    from circuitflow.toy import build_tokenizer

    tokenizer = build_tokenizer(20)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer), **overrides))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def toy_features(toy_handle):
    """The tiny toy model (float64 bridge), its tokenizer, and topk dictionaries (transcoders with skip, attention
    SAEs) trained in seconds on every + and − prompt: ``(bridge, tokenizer, dictionaries)``."""
    from circuitflow.features.training import DictionarySpec, train_dictionaries
    from circuitflow.models import load_bridge, load_tokenizer

    bridge = load_bridge(toy_handle, device="cpu", dtype="float64")
    tokenizer = load_tokenizer(toy_handle)
    n = TINY_RECIPE.max_number + 1
    texts = [f"{x}+{y}=" for x in range(n) for y in range(n) if x + y < n] + [
        f"{x}-{y}=" for x in range(n) for y in range(x + 1)]
    ids = torch.tensor(tokenizer(texts)["input_ids"])
    spec = DictionarySpec(k=4, expansion=4, steps=400, skip=True)
    return bridge, tokenizer, train_dictionaries(bridge, ids, spec, progress=False)
