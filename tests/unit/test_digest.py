"""Model digests: stable for unchanged files, changed by one byte, and broken files named in one line."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuitflow.models import ModelHandle, write_handle
from circuitflow.models.digest import ModelFileError, model_digest, model_files, write_model_digest
from tests.conftest import save_tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return save_tiny_model("gpt_neox", tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture
def model(saved, tmp_path) -> tuple[Path, Path, Path]:
    """A copy of the tiny model with its handle and an empty checkpoint index: (model dir, handle, index)."""
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    write_handle(ModelHandle("mine", str(folder), None, "local"), tmp_path / "model.json")
    (tmp_path / "checkpoints.json").write_text("[]")
    return folder, tmp_path / "model.json", tmp_path / "checkpoints.json"


def digest_error(handle: Path, index: Path) -> str:
    with pytest.raises(ModelFileError) as err:
        model_digest(handle, index)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_digest_lists_weights_config_and_tokenizer_and_is_stable(model, tmp_path):
    folder, handle, index = model
    first = write_model_digest(handle, index, tmp_path / "a.json")
    write_model_digest(handle, index, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    files = first["revisions"]["main"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in files.values())
    assert str(folder) not in (tmp_path / "a.json").read_text()  # no paths: a moved project keeps its digest


def test_one_changed_byte_changes_that_file_and_the_digest(model):
    folder, handle, index = model
    before = model_digest(handle, index)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8 + int.from_bytes(data[:8], "little")] ^= 1  # lowest mantissa bit of the first tensor value
    weights.write_bytes(bytes(data))
    after = model_digest(handle, index)
    changed = {name for name, digest in after["revisions"]["main"].items()
               if before["revisions"]["main"][name] != digest}
    assert changed == {"model.safetensors"} and after["sha256"] != before["sha256"]


def test_a_truncated_safetensors_file_is_named(model):
    folder, handle, index = model
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    message = digest_error(handle, index)
    assert message.startswith(f"{weights}: truncated safetensors file: tensor ") and "snakemake" not in message
    weights.write_bytes(b"\x10\x00")
    assert digest_error(handle, index).startswith(f"{weights}: truncated safetensors file (2 bytes")


def test_a_nan_tensor_is_named_with_its_file(model):
    folder, handle, index = model
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[3]
    tensors[name].view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
    save_file(tensors, weights, metadata={"format": "pt"})
    message = digest_error(handle, index)
    assert message.startswith(f"{weights}: tensor {name} has 2 non-finite value(s) (NaN or inf); replace it")


@pytest.mark.parametrize(("remove", "expected"), [
    (["tokenizer.json"], r"^{folder}: no tokenizer \(none of tokenizer.json, "),
    (["config.json"], r"^{folder}/config.json: missing "),
    (["model.safetensors"], r"^{folder}: no weights "),
])
def test_missing_files_are_named(model, remove, expected):
    folder, handle, index = model
    for name in remove:
        (folder / name).unlink()
    assert re.search(expected.format(folder=re.escape(str(folder))), digest_error(handle, index))


def test_checkpoints_and_an_adapter_are_digested_and_the_fix_follows_the_source(model, saved, tmp_path):
    folder, handle, index = model
    step0 = tmp_path / "step0"
    shutil.copytree(saved, step0)
    index.write_text(json.dumps([asdict(ModelHandle("mine", str(step0), "step0", "toy"))]))
    adapter = tmp_path / "adapter.safetensors"
    save_file({"gpt_neox.layers.0.mlp.dense_h_to_4h.lora_A": torch.ones(2, 32)}, adapter)
    record = model_digest(handle, index, adapter)
    assert set(record["revisions"]) == {"step0", "main"} and set(record["adapter"]) == {"adapter.safetensors"}
    (step0 / "tokenizer.json").unlink()
    assert digest_error(handle, index).endswith("retrain it: snakemake --forcerun train_toy")
    save_file({"m.lora_A": torch.tensor([[float("nan")]])}, adapter)
    with pytest.raises(ModelFileError, match=rf"^{re.escape(str(adapter))}: tensor m.lora_A has 1 non-finite value"):
        model_digest(handle, index, adapter)  # the adapter is named before the (merged) model it breaks


def test_model_files_are_the_weights_configs_and_tokenizer_not_other_files(saved, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(saved, folder)
    (folder / "README.md").write_text("notes")
    (folder / ".model.safetensors.tmp").mkdir()
    names = [f.name for f in model_files(folder)]
    assert names == sorted(names) and "README.md" not in names and "model.safetensors" in names
    assert model_files(folder / "model.safetensors") == [folder / "model.safetensors"]
    assert model_files(tmp_path / "absent") == []
    nested = model_files(tmp_path, nested=True)
    assert nested == [folder / name for name in names]
