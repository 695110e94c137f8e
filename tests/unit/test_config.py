"""Config errors stop the run before any job with one line naming the field and the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from circuitflow.config import load_workflow_config
from circuitflow.models.registry import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())


def _load(**changes):
    config = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return load_workflow_config(config, SCHEMA)


def test_default_config_is_valid_and_defaults_are_filled():
    config, specs = _load()
    assert set(specs) == {"toy", "toy-addsub-lora"}
    assert specs["toy"].checkpoints[-1] == "step6500"
    assert config["prompts"]["few_shot_separator"] == ";"  # filled from the schema
    assert config["device_map"] is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"promts": {}}, r"^promts: unknown key; remove it or use one of the keys allowed here: batch_size, circuits"),
        ({"operators": ["add", "pow"]}, r"operators.1: 'pow' is not one of add, sub, mul, div"),
        ({"prompts__operand_max": 150}, r"prompts.operand_max/answer_max: model toy has single tokens only for 0..99"),
        ({"prompts__k": 700}, r"prompts.k=700: only 672 legal mul prompts exist"),
        ({"models__toy__recipe__layers": 3}, r"models.toy.recipe.layers: unknown key; .* n_layers"),
        ({"models__toy__recipe__architecture": "mamba"},
         r"models.toy.recipe.architecture: 'mamba' is not one of gpt_neox, llama, gpt2"),
        ({"models__toy__recipe__n_kv_heads": 0}, r"models.toy.recipe.n_kv_heads: 0 is less than the minimum of 1"),
        ({"models__toy__recipe": {"architecture": "llama", "n_heads": 4, "n_kv_heads": 3}},
         r"models.toy.recipe.n_kv_heads=3 must divide n_heads=4"),
        ({"models__toy__recipe": {"n_kv_heads": 2}}, r"models.toy.recipe.n_kv_heads applies to architecture llama"),
        ({"models__mine": {"source": "local", "path": "/no/such/dir"}},
         r"models.mine.path: '/no/such/dir' is not a directory"),
        ({"models__toy-addsub-lora__base": "nope"}, r"models.toy-addsub-lora.base: 'nope' is not a model"),
        ({"models__toy-addsub-lora__base_revision": "step7"}, r"base_revision: 'step7' is not a checkpoint of toy"),
        ({"models__hub1": {"source": "hub", "repo_id": "pythia"}},
         r"models.hub1.repo_id: 'pythia' is not valid; use owner/name"),
        ({"models__figures": {"source": "toy"}}, r"models.figures: the name 'figures' is reserved"),
        ({"models__x": {"source": "lora", "base": "toy", "adapter": {"path": "/no/adapter"}}},
         r"models.x.adapter.path: '/no/adapter' does not exist"),
        ({"circuits__models": ["toy", "pythia"]}, r"circuits.models: unknown model\(s\) \['pythia'\]"),
        ({"circuits__methods": ["EAP-IG"]}, r"circuits.methods.0: 'EAP-IG' is not one of EAP, EAP-IG-inputs"),
        ({"localization__exact_neuron_layers": [1, 5]}, r"localization.exact_neuron_layers: \[5\] do not exist in toy"),
        ({"localization__heuristics_layer": 2}, r"localization.heuristics_layer=2: toy has layers 0..1"),
        ({"heuristics__checkpoint_steps": [0, 7]}, r"heuristics.checkpoint_steps: \[7\] are not checkpoints of toy"),
        ({"heuristics__threshold": 1.5}, r"heuristics.threshold: 1.5 is greater than the maximum of 1"),
    ],
)
def test_config_errors_name_field_and_fix(changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        _load(**changes)
    assert "\n" not in str(err.value)


SHIPPED = [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml")),
           *sorted((ROOT / "tests/configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(path, tmp_path, monkeypatch):
    config = yaml.safe_load(path.read_text())
    for spec in config["models"].values():  # an adapter file the user brings (configs/pythia-1.4b-lora.yaml)
        if "path" in spec.get("adapter", {}):
            (tmp_path / spec["adapter"]["path"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / spec["adapter"]["path"]).touch()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("circuitflow.config.hub_offline", lambda: False)  # hub models: not in this machine's cache
    validated, specs = load_workflow_config(config, SCHEMA)
    assert set(specs) == set(config["models"]) and validated["results"] == config.get("results", "results")


@pytest.mark.parametrize("name", ["pythia-1.4b.yaml", "llama-3-8b.yaml", "gpt-j.yaml"])
def test_shipped_real_model_configs_are_valid(name, monkeypatch):
    monkeypatch.setattr("circuitflow.config.hub_offline", lambda: False)  # valid as configs; the cache is tested apart
    config, specs = load_workflow_config(yaml.safe_load((ROOT / "configs" / name).read_text()), SCHEMA)
    assert all(spec.source == "hub" for spec in specs.values())
    if name == "pythia-1.4b.yaml":
        assert specs["pythia-1.4b-deduped"].checkpoints[0] == "step512"


def test_toy_llama_config_is_the_default_with_a_llama_toy():
    llama = yaml.safe_load((ROOT / "configs" / "toy-llama.yaml").read_text())
    config, specs = load_workflow_config(llama, SCHEMA)
    assert specs["toy"].recipe["architecture"] == "llama" and config["heuristics"]["two_sided"] is True
    recipe = llama["models"]["toy"]["recipe"]
    del recipe["architecture"], recipe["n_kv_heads"], llama["heuristics"]["two_sided"]
    assert llama == DEFAULT  # nothing else differs from config.yaml


def test_schema_types_every_recipe_field():
    from dataclasses import fields

    from circuitflow.recipes import LoraRecipe, ToyRecipe

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["models"]["additionalProperties"]["allOf"]
    toy = schema[0]["then"]["properties"]["recipe"]["properties"]
    train = schema[3]["then"]["properties"]["adapter"]["properties"]["train"]["properties"]
    assert set(toy) == {f.name for f in fields(ToyRecipe)}
    assert set(train) == {f.name for f in fields(LoraRecipe)}
