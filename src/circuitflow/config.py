"""Workflow configuration: JSON-schema validation with defaults, then checks the schema cannot express.

Every problem is reported as one :class:`ConfigError` line naming the field and what to do, before any job runs.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from circuitflow.arithmetic import legal_pairs
from circuitflow.models.download import hub_offline, is_cached, offline_fix
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


_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string", "array": "a list",
               "object": "a mapping", "boolean": "true or false", "null": "null"}


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _type_fix(wanted: list[str], value: object) -> str:
    number = _as_number(value) if isinstance(value, str) else None
    if {"number", "integer"} & set(wanted) and number is not None:
        plain = int(number) if "integer" in wanted and number.is_integer() else number
        yaml_note = " (YAML reads an exponent without a decimal point, like 3e-3, as text; 3.0e-3 is a number)"
        return f"write a plain number without quotes, e.g. {plain!r}" + (yaml_note if "e" in value.lower() else "")
    if "array" in wanted and not isinstance(value, list):
        return f"write a list, e.g. [{value}]"
    return f"give {' or '.join(_TYPE_NAMES.get(t, t) for t in wanted)}"


def _duplicates(values: list) -> list:
    repeated: list = []
    for i, value in enumerate(values):
        if value in values[:i] and value not in repeated:
            repeated.append(value)
    return repeated


def _bound(error, relation: str, fix: str) -> str:
    return f"{error.instance!r} is {relation} {error.validator_value}; {fix}"


def _explain(error) -> tuple[str, str]:
    """(field suffix, what is wrong and the fix) of one jsonschema error."""
    v, value = error.validator_value, error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    hint = schema.get("x-fix")
    if error.validator == "type":
        wanted = v if isinstance(v, list) else [v]
        return "", f"{value!r} is not {' or '.join(_TYPE_NAMES.get(t, t) for t in wanted)}; " + (
            hint or _type_fix(wanted, value))
    if error.validator == "required":
        missing = next(k for k in v if k not in value)
        return f".{missing}", f"missing; {hint or f'add {missing}'}"
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed))[0]
        return f".{extra}", f"unknown key; remove it or use one of the keys allowed here: {', '.join(allowed)}"
    simple = {
        "enum": lambda: f"{value!r} is not one of {', '.join(map(str, v))}; use one of them",
        "const": lambda: f"{value!r} must be {v!r}",
        "minimum": lambda: _bound(error, "less than the minimum of", f"use {v} or more"),
        "maximum": lambda: _bound(error, "greater than the maximum of", f"use {v} or less"),
        "exclusiveMinimum": lambda: _bound(error, "not greater than", f"use a value above {v}"),
        "exclusiveMaximum": lambda: _bound(error, "not less than", f"use a value below {v}"),
        "multipleOf": lambda: _bound(error, "not a multiple of", f"use a multiple of {v}"),
        "minLength": lambda: "must not be empty" if v == 1 else f"{value!r} is shorter than {v} characters",
        "maxLength": lambda: f"{value!r} is longer than {v} characters; shorten it",
        "pattern": lambda: f"{value!r} is not valid; {hint}" if hint else f"{value!r} does not match {v}",
        "minItems": lambda: f"needs at least {v} item(s); add some",
        "maxItems": lambda: f"has more than {v} item(s); remove some",
        "uniqueItems": lambda: f"{_duplicates(value)} appear more than once; list each value once",
        "minProperties": lambda: f"needs at least {v} entr{'y' if v == 1 else 'ies'}; add one",
        "oneOf": lambda: hint or "matches none or several of the allowed forms; see the schema",
    }
    if error.validator in simple:
        return "", simple[error.validator]()
    return "", f"{error.message}; {hint or schema.get('description', 'see workflow/schemas/config.schema.yaml')}"


def _describe(error) -> str:
    """One line naming the failing field (dotted path) with what is wrong and how to fix it."""
    suffix, text = _explain(error)
    path = ".".join(str(p) for p in error.absolute_path) + suffix
    return re.sub(r"\s*\n\s*", " ", f"{path.lstrip('.') or '<top level>'}: {text}")


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


def check_results(results: str) -> None:
    """``results`` must name a folder other than the filesystem root (relative paths are under the working
    directory)."""
    if results.strip().startswith("~"):
        raise ConfigError(f"results={results!r}: '~' is not expanded; write the folder's full path")
    path = Path(results.strip()).resolve()
    if path.parent == path:
        raise ConfigError(f"results={results!r} is the filesystem root; name a folder, e.g. results or "
                          "/data/circuitflow-results")


def check_device(device: str) -> None:
    """``device`` must be one torch sees here: ``cuda``/``cuda:N`` with N below the number of visible GPUs, ``mps``
    when available; ``auto`` and ``cpu`` always work."""
    if device in ("auto", "cpu"):
        return
    import torch

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device=mps: torch sees no MPS device on this machine; use auto or cpu")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        choices = f"auto, cpu or cuda:0..cuda:{count - 1}" if count else "auto or cpu"
        raise ConfigError(f"device={device}: torch sees {count} CUDA device(s) on this machine; use {choices}")


def check_counts(config: dict) -> None:
    """Counts bounded by another config value (not by a model's shape)."""
    heur = config["heuristics"]
    over = [j for j in heur["knockout_neurons_per_layer"] if j > heur["neurons_per_layer"]]
    if over:
        raise ConfigError(f"heuristics.knockout_neurons_per_layer: {over} exceed heuristics.neurons_per_layer="
                          f"{heur['neurons_per_layer']} (only that many neurons per layer are classified); drop them "
                          "or raise heuristics.neurons_per_layer")


def _check_toy_shape(config: dict, name: str, spec: ModelSpec) -> None:
    """Counts of ``localization`` and ``heuristics`` must fit the toy's shape (a non-toy model's shape is known only
    when its job loads it)."""
    recipe = toy_recipe(spec)
    heads = recipe.n_layers * recipe.n_heads
    for key in ("top_heads", "attention_heads"):
        if config["localization"][key] > heads:
            raise ConfigError(f"localization.{key}={config['localization'][key]}: {name} has only {heads} heads "
                              f"({recipe.n_layers} layers x {recipe.n_heads}); use at most {heads}")
    heur = config["heuristics"]
    if heur["neurons_per_layer"] > recipe.d_mlp:
        raise ConfigError(f"heuristics.neurons_per_layer={heur['neurons_per_layer']}: {name} has only {recipe.d_mlp} "
                          f"neurons per layer (d_mlp); use at most {recipe.d_mlp}")
    classified = recipe.n_layers * heur["neurons_per_layer"]
    if heur["map_neurons"] > classified:
        raise ConfigError(f"heuristics.map_neurons={heur['map_neurons']}: at most {classified} neurons of {name} are "
                          f"classified ({recipe.n_layers} layers x heuristics.neurons_per_layer); use at most "
                          f"{classified}")


def check_localization(config: dict, specs: dict[str, ModelSpec]) -> None:
    """Layers and counts named in ``localization`` and ``heuristics`` must exist in the toy models analysed (other
    models are checked by the jobs, once their shape is known)."""
    loc = config["localization"]
    for name in loc["models"] if loc["models"] is not None else specs:
        if specs[name].source != "toy":
            continue
        _check_toy_shape(config, name, specs[name])
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
            _check_k(p, op, limit, vocab_max)


def _check_k(p: dict, op: str, limit: int, vocab_max: int) -> None:
    """``prompts.k`` must not exceed the legal prompts of ``op``; the hint names the limit that binds."""
    n = len(legal_pairs(op, p["operand_max"], limit, p["division"]))
    if n >= p["k"]:
        return
    where = f"prompts.k={p['k']}: only {n} legal {op} prompts exist with operands 0..{p['operand_max']}"
    if p["answer_max"] is not None and len(legal_pairs(op, p["operand_max"], vocab_max, p["division"])) >= p["k"]:
        raise ConfigError(f"{where} and answers 0..{limit}; lower prompts.k or raise prompts.answer_max (at most "
                          f"{vocab_max})")
    bound = "raise prompts.operand_max" if p["operand_max"] < vocab_max else "use a toy with a larger max_number"
    raise ConfigError(f"{where} and answers 0..{limit}; lower prompts.k or {bound}")


def check_hub_cache(specs: dict[str, ModelSpec]) -> None:
    """Offline (``HF_HUB_OFFLINE``), every revision of every hub model must be in the Hugging Face cache already;
    online nothing is looked up here (no network call while the workflow is parsed: the download job fetches)."""
    hub = [spec for spec in specs.values() if spec.source == "hub"]
    if not hub or not hub_offline():
        return
    for spec in hub:
        for revision in (*spec.checkpoints, spec.revision):
            if not is_cached(spec.repo_id, revision):
                raise ConfigError(f"models.{spec.name}: {offline_fix(spec.repo_id, revision)}")


def load_workflow_config(config: dict, schema_path: Path | str) -> tuple[dict, dict[str, ModelSpec]]:
    """Validate the whole config; return it (defaults filled) and the model specs by name."""
    config = validate_config(config, schema_path)
    check_results(config["results"])
    check_device(config["device"])
    check_counts(config)
    specs = expand_models(config["models"])
    check_hub_cache(specs)
    check_prompts(config, specs)
    for stage in ("circuits", "localization", "features"):
        unknown = [m for m in config[stage]["models"] or [] if m not in specs]
        if unknown:
            raise ConfigError(f"{stage}.models: unknown model(s) {unknown}; use names from models: {sorted(specs)}")
    check_localization(config, specs)
    check_checkpoint_steps(config, specs)
    return config, specs
