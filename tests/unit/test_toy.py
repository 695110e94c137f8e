import dataclasses
import json

import pandas as pd
import pytest
import torch

from circuitflow.recipes import ARCHITECTURES, LORA_TARGETS, LoraRecipe, ToyRecipe, recipe_from_dict
from circuitflow.toy import build_tokenizer, make_data, train_toy
from tests.conftest import TINY_RECIPE


def test_tokenizer_one_token_per_number_and_symbol():
    tok = build_tokenizer(99)
    ids = tok("12+7=")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["12", "+", "7", "="]
    assert all(len(tok(str(n), add_special_tokens=False)["input_ids"]) == 1 for n in range(100))
    assert tok.convert_ids_to_tokens(tok("100")["input_ids"]) == ["<unk>"]
    assert tok.decode(tok("3*4=12")["input_ids"]) == "3*4=12"


def test_heldout_split_is_disjoint_and_seeded():
    recipe = ToyRecipe(max_number=20, heldout_fraction=0.2, seed=3)
    a, b = make_data(recipe, build_tokenizer(20)), make_data(recipe, build_tokenizer(20))
    for op in recipe.operators:
        train = {tuple(t.tolist()) for t in a.train_tokens[op]}
        held = {tuple(t.tolist()) for t in a.heldout_tokens[op]}
        assert not train & held
        assert torch.equal(a.heldout_tokens[op], b.heldout_tokens[op])


def test_training_log_and_checkpoints(toy_dir):
    log = pd.read_parquet(toy_dir / "log.parquet")
    assert set(log["step"]) == {0, 150}
    assert (toy_dir / "checkpoints" / "step150" / "config.json").exists()
    first, last = (log[log["step"] == s]["heldout_loss"].mean() for s in (0, 150))
    assert last < first  # training reduced the held-out loss
    assert log["heldout_accuracy"].between(0, 1).all()


def test_training_is_deterministic(tmp_path, toy_dir):
    from safetensors.torch import load_file

    torch.set_num_threads(2)  # as the toy_dir fixture trains
    train_toy(TINY_RECIPE, tmp_path / "again", tmp_path / "log.parquet")
    a = load_file(str(toy_dir / "checkpoints" / "step150" / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "step150" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# what each architecture must be, read from the saved HF config (independent of the code that wrote it)
EXPECTED_HF = {
    "gpt_neox": ("GPTNeoXForCausalLM", {"use_parallel_residual": True, "num_attention_heads": 4}),
    "llama": ("LlamaForCausalLM", {"num_key_value_heads": 2, "num_attention_heads": 4, "hidden_act": "silu"}),
    "gpt2": ("GPT2LMHeadModel", {"n_head": 4, "n_positions": 64}),
}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_toy(request, tmp_path_factory):
    """(recipe, checkpoint dir) of a 60-step toy of each architecture."""
    torch.set_num_threads(2)
    recipe = dataclasses.replace(TINY_RECIPE, architecture=request.param, steps=60, checkpoint_steps=(0, 60))
    out = tmp_path_factory.mktemp(request.param)
    train_toy(recipe, out / "checkpoints", out / "log.parquet")
    return recipe, out


def test_each_architecture_trains_deterministically(arch_toy, tmp_path):
    from safetensors.torch import load_file

    recipe, out = arch_toy
    log = pd.read_parquet(out / "log.parquet")
    first, last = (log[log["step"] == s]["heldout_loss"].mean() for s in (0, 60))
    assert last < first
    train_toy(recipe, tmp_path / "again", tmp_path / "log.parquet")
    a = load_file(str(out / "checkpoints" / "step60" / "model.safetensors"))
    b = load_file(str(tmp_path / "again" / "step60" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_architecture_saves_a_loadable_hf_checkpoint(arch_toy):
    from transformers import AutoModelForCausalLM

    recipe, out = arch_toy
    path = out / "checkpoints" / "step60"
    model = AutoModelForCausalLM.from_pretrained(path)
    cls, attrs = EXPECTED_HF[recipe.architecture]
    assert type(model).__name__ == cls
    assert {k: getattr(model.config, k) for k in attrs} == attrs
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(build_tokenizer(12))
    assert json.loads((path / "circuitflow.json").read_text())["recipe"]["architecture"] == recipe.architecture


def test_each_architecture_bridge_logits_equal_hf(arch_toy):
    from circuitflow.models import ModelHandle, load_bridge, load_hf_model

    recipe, out = arch_toy
    handle = ModelHandle("toy", str(out / "checkpoints" / "step60"), "step60", "toy")
    tokens = make_data(recipe, build_tokenizer(12)).heldout_tokens["add"][:8]
    hf, bridge = load_hf_model(handle, "cpu"), load_bridge(handle, "cpu")
    with torch.no_grad():
        expected = hf(tokens).logits
        torch.testing.assert_close(bridge(tokens), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected[:, -1], expected[:1, -1])  # the logits depend on the prompt


def test_llama_kv_heads_default_to_half_the_heads():
    assert ToyRecipe(architecture="llama", n_heads=8, d_model=64).n_kv_heads == 4
    assert ToyRecipe(architecture="llama", n_heads=3, d_model=48).n_kv_heads == 3
    assert ToyRecipe(architecture="llama", n_heads=8, d_model=64, n_kv_heads=8).n_kv_heads == 8
    assert ToyRecipe().n_kv_heads is None


def test_lora_targets_follow_the_architecture(arch_toy):
    from transformers import AutoModelForCausalLM

    recipe, out = arch_toy
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step60")
    leaves = {name.rpartition(".")[2] for name, module in model.named_modules() if hasattr(module, "weight")}
    targets = LoraRecipe().targets(recipe.architecture)
    assert set(targets) <= leaves and targets == LORA_TARGETS[recipe.architecture]
    assert LoraRecipe(target_modules=("c_fc",)).targets(recipe.architecture) == ("c_fc",)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"layers": 3}, r"^models.toy.recipe: unknown key\(s\) \['layers'\]"),
        ({"steps": 10, "checkpoint_steps": [20]},
         r"^models.toy.recipe.checkpoint_steps \[20\] lie outside 0..steps=10"),
        ({"architecture": "mamba"}, r"^models.toy.recipe.architecture='mamba' is unknown; use one of gpt_neox, llama"),
        ({"architecture": "llama", "n_heads": 4, "n_kv_heads": 3},
         r"^models.toy.recipe.n_kv_heads=3 must divide n_heads=4"),
        ({"n_kv_heads": 2}, r"^models.toy.recipe.n_kv_heads applies to architecture llama only"),
    ],
)
def test_recipe_errors_name_the_field(values, message):
    with pytest.raises(ValueError, match=message) as err:
        recipe_from_dict(ToyRecipe, values, "models.toy.recipe")
    assert "\n" not in str(err.value)
