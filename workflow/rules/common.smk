# Config validation, wildcard constraints, input functions and the list of final outputs.
import dataclasses
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

from circuitflow import code_version
from circuitflow.config import ConfigError, load_workflow_config

try:
    CFG, MODELS = load_workflow_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(f"config error: {err}") from None

RES = CFG["results"]
OPS = CFG["operators"]
# GPU-capable jobs ask for one GPU unless the config pins the CPU (the default profile allows one at a time).
GPU = 0 if CFG["device"] == "cpu" else 1


def names(source=None, with_checkpoints=False):
    return [n for n, s in MODELS.items()
            if (source is None or s.source == source) and (not with_checkpoints or s.checkpoints)]


def alternatives(items):
    """A regex matching exactly one of ``items`` (or nothing when empty)."""
    return "|".join(re.escape(i) for i in items) or "(?!)"


wildcard_constraints:
    model=alternatives(names()),
    op=alternatives(OPS),


def model_spec(wildcards):
    """The model's registry entry as a plain dict (so Snakemake's params trigger sees every change)."""
    return dataclasses.asdict(MODELS[wildcards.model])


def model_handle(wildcards):
    return f"{RES}/models/{wildcards.model}/model.json"


def lora_base_files(wildcards):
    base = MODELS[wildcards.model].base
    return {"handle": f"{RES}/models/{base}/model.json", "checkpoints": f"{RES}/models/{base}/checkpoints.json"}


def lora_adapter(wildcards):
    adapter = MODELS[wildcards.model].adapter
    return adapter["path"] if "path" in adapter else f"{RES}/models/{wildcards.model}/adapter"


CIRCUIT_METHODS = CFG["circuits"]["methods"]


def stage_models(stage):
    chosen = CFG[stage]["models"]
    return list(chosen) if chosen is not None else names()


LOCALIZATION_TABLES = ("ie_maps", "neurons", "probes", "paper_circuits", "attention")
LOCALIZATION_FIGURES = ("ie_map", "neurons", "probes", "attention")


def localization_outputs(name):
    return expand(f"{RES}/{name}/{{table}}/{{op}}.parquet", table=LOCALIZATION_TABLES, op=OPS) + expand(
        f"{RES}/figures/{name}/{{figure}}_{{op}}.png", figure=LOCALIZATION_FIGURES, op=OPS
    ) + [f"{RES}/figures/{name}/paper_faithfulness.png"]


HEURISTICS_TABLES = ("", "_knockout", "_prompt_knockout", "_maps")


def heuristics_outputs(name):
    return expand(f"{RES}/{name}/heuristics/{{op}}{{table}}.parquet", op=OPS, table=HEURISTICS_TABLES) + expand(
        f"{RES}/figures/{name}/{{figure}}_{{op}}.png", figure=("heuristics", "heuristic_maps"), op=OPS
    )


def circuit_outputs(name):
    return expand(
        [f"{RES}/{name}/circuits/{{op}}/faithfulness.parquet", f"{RES}/{name}/circuits/{{op}}/agreement.parquet",
         f"{RES}/figures/{name}/faithfulness_{{op}}.png"], op=OPS,
    ) + expand(f"{RES}/figures/{name}/circuits/{{op}}/{{method}}.png", op=OPS, method=CIRCUIT_METHODS)


def all_outputs():
    outputs = [f"{RES}/figures/accuracy.png"]
    for name in stage_models("circuits"):
        outputs += circuit_outputs(name)
    for name in stage_models("localization"):
        outputs += localization_outputs(name) + heuristics_outputs(name)
        if MODELS[name].checkpoints:
            outputs += [f"{RES}/figures/{name}/checkpoint_ie.png", f"{RES}/figures/{name}/checkpoint_heuristics.png"]
    for name in names():
        outputs += expand(f"{RES}/{name}/prompts/{{op}}.parquet", op=OPS)
        outputs.append(f"{RES}/{name}/accuracy.parquet")
    for name in names(with_checkpoints=True):
        outputs += [f"{RES}/{name}/checkpoint_accuracy.parquet", f"{RES}/figures/{name}/checkpoint_accuracy.png"]
    for name in names("toy"):
        outputs.append(f"{RES}/figures/{name}/training.png")
    for name in names("lora"):
        if "train" in MODELS[name].adapter:
            outputs.append(f"{RES}/models/{name}/finetune.parquet")
    return outputs
