"""Merging LoRA adapters into a base model, writing a plain Hugging Face directory.

Two adapter formats:

- a **peft** adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``): merged with peft's
  ``merge_and_unload()``, which uses the adapter's own ``lora_alpha / r`` scaling;
- a **raw** ``.safetensors`` file with, for each adapted module ``<m>`` (a dotted module path of the HF model, an
  optional ``base_model.model.`` prefix is ignored): ``<m>.lora_A`` [r, d_in] and ``<m>.lora_B`` [d_out, r],
  optionally a second pair ``<m>.lora_A_extra`` / ``<m>.lora_B_extra`` and a bias delta ``<m>.bias_delta`` [d_out]
  (also for GPT-2's ``Conv1D`` projections, whose weight is stored transposed as [d_in, d_out]).
  The merge is explicit::

      W <- W + scaling * B @ A + extra_scaling * B_extra @ A_extra,     b <- b + bias_delta

  with ``scaling`` and ``extra_scaling`` given in the config (no default is guessed: adapters trained elsewhere
  use different conventions, e.g. alpha/r or alpha/sqrt(r)).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from circuitflow.io import atomic_path, write_json

if TYPE_CHECKING:
    import torch

PEFT_PREFIX = "base_model.model."
PEFT_SET_FIELDS = ("target_modules", "exclude_modules")  # sets in peft's config, saved as lists in hash order


def stabilize_peft_config(adapter_dir: Path, base_model: str) -> None:
    """Rewrite ``adapter_dir/adapter_config.json`` so its bytes are reproducible and relocatable: keys and the
    module-set fields sorted (peft saves sets in the process's hash order), and ``base_model_name_or_path`` set to
    ``base_model`` (a relative path, not this machine's absolute one)."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    for key in PEFT_SET_FIELDS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    config["base_model_name_or_path"] = base_model
    write_json(config, path)


def is_peft_dir(path: Path) -> bool:
    """True when ``path`` is a peft adapter directory."""
    return path.is_dir() and (path / "adapter_config.json").exists()


def merge_raw_lora(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], scaling: float, extra_scaling: float | None = None
) -> list[str]:
    """Merge raw LoRA ``tensors`` into ``model`` in place; return the names of the modules that changed.

    Raises ``ValueError`` naming the key when a module does not exist, a pair is incomplete, or shapes disagree.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        key = key.removeprefix(PEFT_PREFIX)
        module_name, _, part = key.rpartition(".")
        if part not in {"lora_A", "lora_B", "lora_A_extra", "lora_B_extra", "bias_delta"}:
            raise ValueError(f"raw LoRA key {key!r}: expected <module>.lora_A/lora_B[_extra] or <module>.bias_delta")
        groups.setdefault(module_name, {})[part] = value
    modules = dict(model.named_modules())
    changed = []
    for module_name, parts in sorted(groups.items()):
        module = modules.get(module_name)
        if module is None or not hasattr(module, "weight"):
            raise ValueError(f"raw LoRA module {module_name!r} is not a weight-bearing module of the base model")
        weight = module.weight
        transposed = isinstance(module, Conv1D)  # GPT-2 stores its projections as [d_in, d_out]
        shape = tuple(weight.shape[::-1]) if transposed else tuple(weight.shape)
        delta = torch.zeros(shape, dtype=torch.float32)
        for suffix, scale in (("", scaling), ("_extra", extra_scaling)):
            a, b = parts.get(f"lora_A{suffix}"), parts.get(f"lora_B{suffix}")
            if a is None and b is None:
                continue
            if a is None or b is None:
                raise ValueError(f"raw LoRA module {module_name!r}: lora_A{suffix} and lora_B{suffix} come in pairs")
            if scale is None:
                raise ValueError(f"raw LoRA module {module_name!r} has an _extra pair: set adapter.extra_scaling")
            if (b.shape[0], a.shape[1]) != shape or a.shape[0] != b.shape[1]:
                raise ValueError(f"raw LoRA module {module_name!r}: B{tuple(b.shape)} @ A{tuple(a.shape)} does not "
                                 f"match the weight [d_out, d_in] = {shape}")
            delta += scale * (b.float() @ a.float())
        with torch.no_grad():
            weight += (delta.T if transposed else delta).to(weight.dtype)
            if "bias_delta" in parts:
                if module.bias is None or module.bias.shape != parts["bias_delta"].shape:
                    raise ValueError(f"raw LoRA module {module_name!r}: bias_delta does not match the module's bias")
                module.bias += parts["bias_delta"].to(module.bias.dtype)
        changed.append(module_name)
    return changed


def merge_adapter(
    base_model: torch.nn.Module, adapter: Path, scaling: float | None = None, extra_scaling: float | None = None
) -> torch.nn.Module:
    """Return ``base_model`` with the adapter at ``adapter`` (peft directory or raw ``.safetensors``) merged in."""
    if is_peft_dir(adapter):
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(adapter)).merge_and_unload()
    if adapter.suffix == ".safetensors" and adapter.is_file():
        from safetensors.torch import load_file

        if scaling is None:
            raise ValueError(f"adapter {adapter}: a raw LoRA file needs adapter.scaling in the config")
        merge_raw_lora(base_model, load_file(str(adapter)), scaling, extra_scaling)
        return base_model
    raise ValueError(f"adapter {adapter}: neither a peft adapter directory (adapter_config.json) nor a .safetensors "
                     "file")


def export_raw_lora(peft_dir: Path, out_file: Path) -> float:
    """Write a peft adapter as a raw LoRA file (module keys, no peft prefix); return the scaling to merge it with."""
    from safetensors.torch import load_file, save_file

    config = json.loads((peft_dir / "adapter_config.json").read_text())
    raw = {}
    for key, value in load_file(str(peft_dir / "adapter_model.safetensors")).items():
        key = key.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            key = key.replace(f".{part}.weight", f".{part}")
        raw[key] = value.contiguous()
    with atomic_path(out_file) as tmp:
        save_file(raw, str(tmp))
    return config["lora_alpha"] / config["r"]
