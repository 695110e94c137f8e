"""The model registry: config entries (``models:`` in config.yaml) turned into typed specs.

Sources:

- ``toy``: the embedded arithmetic model, trained by the workflow (``recipe`` overrides :class:`~circuitflow.toy.
  ToyRecipe`); its checkpoints are the revisions ``step{N}`` for ``N`` in ``recipe.checkpoint_steps``.
- ``hub``: ``repo_id`` at ``revision`` (default ``main``); ``steps: [..]`` adds the revisions ``step{N}`` (Pythia's
  training checkpoints) for the across-checkpoints analysis.
- ``local``: ``path`` to a Hugging Face model directory.
- ``lora``: ``base`` (the name of another entry; ``base_revision`` picks one of its checkpoints) plus ``adapter``:
  either ``train`` (a LoRA fine-tune of a toy base, run by the workflow) or ``path`` to a peft adapter directory or
  a raw ``.safetensors`` file (see :mod:`circuitflow.models.lora`), merged into a new model directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Source = Literal["toy", "hub", "local", "lora"]
RESERVED_NAMES = frozenset({"models", "figures", "report", "logs", "benchmarks"})


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the registry. ``checkpoints`` are the revisions analysed across training (may be empty)."""

    name: str
    source: Source
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    base: str | None = None
    base_revision: str | None = None
    adapter: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    checkpoints: tuple[str, ...] = ()

    @property
    def final_revision(self) -> str | None:
        """The revision analysed as "the model" (the last training step for a toy)."""
        if self.source == "toy":
            return self.checkpoints[-1] if self.checkpoints else None
        return self.revision


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and the fix."""


def _toy_checkpoints(recipe: dict, where: str) -> tuple[str, ...]:
    from circuitflow.recipes import ToyRecipe, recipe_from_dict

    try:
        steps = recipe_from_dict(ToyRecipe, recipe, where).checkpoint_steps
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return tuple(f"step{s}" for s in steps)


def _check_lora_training(spec: ModelSpec, base: ModelSpec) -> None:
    """``adapter.train`` must build a :class:`~circuitflow.recipes.LoraRecipe` whose ``target_modules`` are
    projections of the toy base's architecture."""
    from circuitflow.recipes import LORA_TARGETS, LoraRecipe, recipe_from_dict

    where = f"models.{spec.name}.adapter.train"
    try:
        recipe = recipe_from_dict(LoraRecipe, spec.adapter["train"], where)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    architecture = base.recipe.get("architecture", "gpt_neox")
    unknown = [m for m in recipe.targets(architecture) if m.rsplit(".", 1)[-1] not in LORA_TARGETS[architecture]]
    if unknown:
        raise ConfigError(f"{where}.target_modules: {unknown} are not projections of {base.name} ({architecture}); "
                          f"use names from {list(LORA_TARGETS[architecture])} or null for all")


def expand_models(entries: dict[str, dict]) -> dict[str, ModelSpec]:
    """Validate the ``models:`` mapping beyond what the JSON schema can say and return one spec per entry."""
    specs: dict[str, ModelSpec] = {}
    for name, entry in entries.items():
        where = f"models.{name}"
        if name in RESERVED_NAMES:
            raise ConfigError(f"{where}: the name {name!r} is reserved for a results folder; rename the model")
        source = entry["source"]
        if source == "toy":
            spec = ModelSpec(name, "toy", recipe=dict(entry.get("recipe", {})),
                             checkpoints=_toy_checkpoints(entry.get("recipe", {}), f"{where}.recipe"))
        elif source == "hub":
            steps = tuple(f"step{s}" for s in entry.get("steps", []))
            spec = ModelSpec(name, "hub", repo_id=entry["repo_id"], revision=entry.get("revision", "main"),
                             checkpoints=steps)
        elif source == "local":
            if not Path(entry["path"]).is_dir():
                raise ConfigError(f"{where}.path: {entry['path']!r} is not a directory; point it at a Hugging Face "
                                  "model directory (config.json + weights)")
            spec = ModelSpec(name, "local", path=str(Path(entry["path"]).resolve()))
        else:
            spec = ModelSpec(name, "lora", base=entry["base"], base_revision=entry.get("base_revision"),
                             adapter=dict(entry["adapter"]))
        specs[name] = spec
    for spec in specs.values():
        if spec.source == "lora":
            _check_lora(spec, specs)
    return specs


def _check_lora(spec: ModelSpec, specs: dict[str, ModelSpec]) -> None:
    where = f"models.{spec.name}"
    base = specs.get(spec.base or "")
    if base is None:
        raise ConfigError(f"{where}.base: {spec.base!r} is not a model in this config; use one of {sorted(specs)}")
    if base.source == "lora":
        raise ConfigError(f"{where}.base: {spec.base!r} is itself a LoRA model; merge onto a toy/hub/local model")
    if spec.base_revision is not None and base.source == "toy" and spec.base_revision not in base.checkpoints:
        raise ConfigError(f"{where}.base_revision: {spec.base_revision!r} is not a checkpoint of {base.name}; "
                          f"use one of {list(base.checkpoints)} (add the step to its recipe.checkpoint_steps)")
    if "train" in spec.adapter and base.source != "toy":
        raise ConfigError(f"{where}.adapter.train: only a toy base can be fine-tuned by the workflow; give "
                          "adapter.path to an adapter trained elsewhere")
    if "train" in spec.adapter:
        _check_lora_training(spec, base)
    if "path" in spec.adapter and not Path(spec.adapter["path"]).exists():
        raise ConfigError(f"{where}.adapter.path: {spec.adapter['path']!r} does not exist; point it at a peft "
                          "adapter directory or a raw LoRA .safetensors file")
