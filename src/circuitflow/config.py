"""Workflow configuration: JSON-schema validation with defaults, then checks the schema cannot express.

Every problem is reported as one :class:`ConfigError` line naming the field and what to do, before any job runs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from circuitflow.arithmetic import legal_pairs
from circuitflow.models.registry import ConfigError, ModelSpec, expand_models


def _fill_defaults(schema: dict, value: object) -> None:
    if not isinstance(value, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            _fill_defaults(sub, value[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(value) - set(schema.get("properties", {})):
            _fill_defaults(extra, value[key])
    for part in schema.get("allOf", []):
        cond = part.get("if", {}).get("properties", {})
        if all(value.get(k) == v.get("const") for k, v in cond.items()):
            _fill_defaults(part.get("then", {}), value)


def _describe(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{path}: {error.message}; allowed keys here: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{path}: {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    return f"{path}: {error.message}"


def validate_config(config: dict, schema_path: Path | str) -> dict:
    """Return a copy of ``config`` validated against the schema with defaults filled in.

    Raises :class:`ConfigError` with the most specific failing field.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    schema = yaml.safe_load(Path(schema_path).read_text())
    config = copy.deepcopy(config)
    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise ConfigError(_describe(error))
    _fill_defaults(schema, config)
    return config


def toy_recipe(spec: ModelSpec):
    """The :class:`~circuitflow.recipes.ToyRecipe` of a toy model entry."""
    from circuitflow.recipes import ToyRecipe, recipe_from_dict

    return recipe_from_dict(ToyRecipe, spec.recipe, f"models.{spec.name}.recipe")


def toy_vocabulary_max(spec: ModelSpec) -> int:
    """The largest single-token number of a toy model (its recipe's ``max_number``)."""
    return toy_recipe(spec).max_number


def check_localization(config: dict, specs: dict[str, ModelSpec]) -> None:
    """Layers named in ``localization`` must exist in the toy models it analyses (other models are checked by the
    jobs, once their config is known)."""
    loc = config["localization"]
    for name in loc["models"] if loc["models"] is not None else specs:
        if specs[name].source != "toy":
            continue
        n_layers = toy_recipe(specs[name]).n_layers
        bad = [layer for layer in loc["exact_neuron_layers"] if layer >= n_layers]
        if bad:
            raise ConfigError(f"localization.exact_neuron_layers: {bad} do not exist in {name} ({n_layers} layers, "
                              f"0..{n_layers - 1}); use existing layers")
        if loc["heuristics_layer"] is not None and loc["heuristics_layer"] >= n_layers:
            raise ConfigError(f"localization.heuristics_layer={loc['heuristics_layer']}: {name} has layers "
                              f"0..{n_layers - 1}; use one of them or null (derived from the probes)")


def check_checkpoint_steps(config: dict, specs: dict[str, ModelSpec]) -> None:
    """``heuristics.checkpoint_steps`` must name checkpoints of every localization model that has checkpoints."""
    steps = config["heuristics"]["checkpoint_steps"]
    names = config["localization"]["models"]
    for name in names if names is not None else specs:
        have = {int(rev[4:]) for rev in specs[name].checkpoints if rev.startswith("step") and rev[4:].isdigit()}
        missing = sorted(set(steps or ()) - have) if specs[name].checkpoints else []
        if missing:
            raise ConfigError(f"heuristics.checkpoint_steps: {missing} are not checkpoints of {name} (it has steps "
                              f"{sorted(have)}); pick from those or use null for all")


def check_prompts(config: dict, specs: dict[str, ModelSpec]) -> None:
    """Checks on ``prompts`` that need the models: answers must be single tokens, ``k`` must be reachable."""
    p = config["prompts"]
    for spec in specs.values():
        root = spec if spec.source != "lora" else specs[spec.base]
        if root.source != "toy":
            continue  # a downloaded/local tokenizer is checked by the prompts job itself
        vocab_max = toy_vocabulary_max(root)
        limit = p["answer_max"] if p["answer_max"] is not None else min(p["operand_max"], vocab_max)
        if p["operand_max"] > vocab_max or limit > vocab_max:
            raise ConfigError(f"prompts.operand_max/answer_max: model {spec.name} has single tokens only for "
                              f"0..{vocab_max}; set prompts.operand_max (and answer_max) to at most {vocab_max}")
        for op in config["operators"]:
            n = len(legal_pairs(op, p["operand_max"], limit, p["division"]))
            if n < p["k"]:
                raise ConfigError(f"prompts.k={p['k']}: only {n} legal {op} prompts exist with operands "
                                  f"0..{p['operand_max']}; lower prompts.k or raise prompts.operand_max")


def load_workflow_config(config: dict, schema_path: Path | str) -> tuple[dict, dict[str, ModelSpec]]:
    """Validate the whole config; return it (defaults filled) and the model specs by name."""
    config = validate_config(config, schema_path)
    specs = expand_models(config["models"])
    check_prompts(config, specs)
    for stage in ("circuits", "localization"):
        unknown = [m for m in config[stage]["models"] or [] if m not in specs]
        if unknown:
            raise ConfigError(f"{stage}.models: unknown model(s) {unknown}; use names from models: {sorted(specs)}")
    check_localization(config, specs)
    check_checkpoint_steps(config, specs)
    return config, specs
