"""LoRA merge: peft and raw formats give the same merged weights, and the merged model equals the adapter model."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from circuitflow.models import ModelHandle, load_hf_model
from circuitflow.models.lora import export_raw_lora, merge_adapter, merge_raw_lora, stabilize_peft_config
from circuitflow.recipes import ARCHITECTURES, LORA_TARGETS, LoraRecipe
from circuitflow.toy import finetune_lora, train_toy
from tests.conftest import TINY_RECIPE


@pytest.fixture(scope="module", params=ARCHITECTURES)
def lora_toy(request, toy_handle, tmp_path_factory) -> tuple[ModelHandle, Path]:
    """(toy handle, peft adapter dir) of each architecture; the adapter targets the architecture's own modules."""
    root = tmp_path_factory.mktemp(f"lora_{request.param}")
    if request.param == "gpt_neox":
        handle = toy_handle
    else:
        recipe = dataclasses.replace(TINY_RECIPE, architecture=request.param, steps=60, checkpoint_steps=(0, 60))
        train_toy(recipe, root / "checkpoints", root / "log.parquet")
        handle = ModelHandle("toy", str(root / "checkpoints" / "step60"), "step60", "toy")
    out = root / "adapter"
    table = finetune_lora(Path(handle.path), LoraRecipe(steps=30, rank=4, alpha=8, lr=1e-2), out)
    assert set(table["stage"]) == {"base", "finetuned"}
    return handle, out


def _logits(model) -> torch.Tensor:
    tokens = torch.tensor([[4 + 3, 4 + 13, 4 + 5, 4 + 17], [4 + 9, 4 + 14, 4 + 2, 4 + 17]])
    with torch.no_grad():
        return model(tokens).logits


def test_adapter_targets_every_projection_of_the_architecture(lora_toy):
    handle, adapter_dir = lora_toy
    saved = set(json.loads((adapter_dir / "adapter_config.json").read_text())["target_modules"])
    model = load_hf_model(handle, "cpu")
    adapted = {n for n, m in model.named_modules() if n.rpartition(".")[2] in saved and hasattr(m, "weight")}
    # every linear map of the blocks (attention and MLP projections); the unembedding is not adapted
    linear = {n for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")}
    assert adapted == linear - {"lm_head", "embed_out"} and len(adapted) >= 8


def test_peft_merge_matches_adapter_and_raw_merge(lora_toy, tmp_path):
    from peft import PeftModel

    handle, adapter_dir = lora_toy
    with_adapter = PeftModel.from_pretrained(load_hf_model(handle, "cpu"), str(adapter_dir))
    expected = _logits(with_adapter)
    merged_peft = merge_adapter(load_hf_model(handle, "cpu"), adapter_dir)
    torch.testing.assert_close(_logits(merged_peft), expected, atol=1e-4, rtol=0)

    raw = tmp_path / "raw.safetensors"
    scaling = export_raw_lora(adapter_dir, raw)
    assert scaling == pytest.approx(8 / 4)
    merged_raw = merge_adapter(load_hf_model(handle, "cpu"), raw, scaling=scaling)
    for (name, a), (_, b) in zip(merged_peft.state_dict().items(), merged_raw.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    # the adapter actually changed the model
    assert not torch.allclose(_logits(load_hf_model(handle, "cpu")), expected)


def test_a_stabilized_peft_config_has_the_same_bytes_whatever_the_set_order_and_still_loads(lora_toy, tmp_path):
    from peft import PeftModel

    handle, adapter_dir = lora_toy
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    texts = []
    for order in (sorted, lambda modules: sorted(modules, reverse=True)):
        copy = shutil.copytree(adapter_dir, tmp_path / f"adapter_{len(texts)}")
        (copy / "adapter_config.json").write_text(json.dumps({**saved, "target_modules": order(
            saved["target_modules"])}))
        stabilize_peft_config(copy, "results/models/toy/checkpoints/step60")
        texts.append((copy / "adapter_config.json").read_text())
    assert texts[0] == texts[1]
    stable = json.loads(texts[0])
    assert stable["target_modules"] == sorted(saved["target_modules"]) and len(stable["target_modules"]) >= 2
    assert stable["base_model_name_or_path"] == "results/models/toy/checkpoints/step60"
    assert list(stable) == sorted(stable)
    expected = _logits(PeftModel.from_pretrained(load_hf_model(handle, "cpu"), str(adapter_dir)))
    got = _logits(PeftModel.from_pretrained(load_hf_model(handle, "cpu"), str(tmp_path / "adapter_0")))
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_raw_merge_extra_pair_and_bias_known_numbers():
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    model = torch.nn.Sequential(layer)
    a, b = torch.ones(1, 3), torch.tensor([[1.0], [2.0]])
    tensors = {"0.lora_A": a, "0.lora_B": b, "0.lora_A_extra": 2 * a, "0.lora_B_extra": b,
               "0.bias_delta": torch.tensor([0.5, -0.5])}
    assert merge_raw_lora(model, tensors, scaling=0.5, extra_scaling=0.25) == ["0"]
    # 0.5 * B@A + 0.25 * B@(2A) = B@A
    torch.testing.assert_close(layer.weight, b @ a)
    torch.testing.assert_close(layer.bias, torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize(
    ("tensors", "scaling", "extra", "message"),
    [
        ({"nope.lora_A": torch.ones(1, 3), "nope.lora_B": torch.ones(2, 1)}, 1.0, None, "not a weight-bearing"),
        ({"0.lora_A": torch.ones(1, 3)}, 1.0, None, "come in pairs"),
        ({"0.lora_A": torch.ones(1, 4), "0.lora_B": torch.ones(2, 1)}, 1.0, None, "does not match"),
        ({"0.lora_A_extra": torch.ones(1, 3), "0.lora_B_extra": torch.ones(2, 1)}, 1.0, None, "extra_scaling"),
        ({"0.weird": torch.ones(1)}, 1.0, None, "expected <module>"),
    ],
)
def test_raw_merge_errors(tensors, scaling, extra, message):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=message):
        merge_raw_lora(model, tensors, scaling, extra)


def test_merge_adapter_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="neither a peft adapter directory"):
        merge_adapter(torch.nn.Linear(1, 1), tmp_path)
