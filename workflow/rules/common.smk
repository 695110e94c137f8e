# Config validation, wildcard constraints, input functions and the list of final outputs.
import dataclasses
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from circuitflow.codehash import script_code_hash
from circuitflow.config import ConfigError, load_workflow_config
from circuitflow.models.digest import model_files
from circuitflow.report import cpr_label
from circuitflow.snakejob import PERFORMANCE_KEYS, without_performance

try:
    CFG, MODELS = load_workflow_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as err:
    sys.exit(f"config error: {err}")

# Scripts read the performance settings (circuitflow.snakejob.job_performance) from the validated config, defaults
# filled in: they are not params, so changing a batch size or the device reruns nothing.
config.update(CFG)

RES = CFG["results"]
OPS = CFG["operators"]
# GPU-capable jobs ask for one GPU unless the config pins the CPU (the default profile allows one at a time).
GPU = 0 if CFG["device"] == "cpu" else 1
# CPU threads of a job that runs a model (torch uses them); fewer when --cores is smaller, more with --set-threads.
MODEL_THREADS = 4

# The jobs' software for --sdm conda: envs/circuitflow.yaml installs the lock and this checkout (editable) through
# CIRCUITFLOW_ROOT, because Snakemake copies env files to .snakemake/conda/ and conda runs pip from there.
os.environ.update(CIRCUITFLOW_ROOT=workflow.basedir)
ENV = f"{workflow.basedir}/envs/circuitflow.yaml"


def script_code(name):
    """Hash of the library modules workflow/scripts/{name}.py imports, for ``params: code=`` (Snakemake reruns a job
    when its script changes, not when a module it imports does)."""
    return script_code_hash(Path(workflow.basedir) / "workflow/scripts" / f"{name}.py")


def _performance(section, name):
    return f"{section}.{name}" in PERFORMANCE_KEYS


def keys(section, *names):
    """The named keys of a config section, for a rule's params: its jobs rerun when one of these changes, not when
    another key of the section does."""
    wrong = [n for n in names if n not in CFG[section] or _performance(section, n)]
    if wrong:
        raise WorkflowError(
            f"workflow/rules: {section}.{wrong} are not config keys or are performance settings "
            "(scripts read those with circuitflow.snakejob.job_performance)"
        )
    return {n: CFG[section][n] for n in names}


def keys_except(section, *names):
    """Every key of a config section but ``names`` and its performance settings, for a rule's params (keys added
    to the section later are included: a rule that reads them reruns when they change)."""
    unknown = [n for n in names if n not in CFG[section]]
    if unknown:
        raise WorkflowError(f"workflow/rules: {section}.{unknown} are not config keys")
    return {n: v for n, v in CFG[section].items() if n not in names and not _performance(section, n)}


def names(source=None, with_checkpoints=False):
    return [
        n
        for n, s in MODELS.items()
        if (source is None or s.source == source) and (not with_checkpoints or s.checkpoints)
    ]


def alternatives(items):
    """A regex matching exactly one of ``items`` (or nothing when empty)."""
    return "|".join(re.escape(i) for i in items) or "(?!)"


wildcard_constraints:
    model=alternatives(names()),
    op=alternatives(OPS),


def model_spec(wildcards):
    """The model's registry entry as a plain dict (so Snakemake's params trigger sees every change)."""
    return dataclasses.asdict(MODELS[wildcards.model])


def model_inputs(*files):
    """Input function (use with ``unpack``): the model's handle files named in ``files`` (``handle``: model.json,
    ``index``: checkpoints.json) and its content ``digest``, so a job that loads the model reruns when its weights or
    tokenizer change (model_digest)."""

    def inputs(wildcards):
        folder = f"{RES}/models/{wildcards.model}"
        paths = {"handle": f"{folder}/model.json", "index": f"{folder}/checkpoints.json"}
        return {name: paths[name] for name in files} | {"digest": f"{folder}/digest.json"}

    return inputs


def lora_base_files(wildcards):
    base = MODELS[wildcards.model].base
    return {
        "handle": f"{RES}/models/{base}/model.json",
        "checkpoints": f"{RES}/models/{base}/checkpoints.json",
        "digest": f"{RES}/models/{base}/digest.json",
    }


def lora_adapter(wildcards):
    adapter = MODELS[wildcards.model].adapter
    return adapter["path"] if "path" in adapter else f"{RES}/models/{wildcards.model}/adapter"


def adapter_files(wildcards):
    """The files of an external adapter (``adapter.path``), listed so that a file rewritten in place reruns the
    merge (Snakemake sees a directory's own time stamp only); none for an adapter the workflow trains."""
    adapter = MODELS[wildcards.model].adapter
    return [str(f) for f in model_files(adapter["path"])] if "path" in adapter else []


def digest_inputs(wildcards):
    """Inputs of model_digest: the handles and the model's files themselves, so a file changed in place reruns the
    digest: a local model's and an external adapter's files, and the toy's checkpoint files once train_toy (a
    Snakemake checkpoint) has written them. A merged LoRA is watched as a whole folder (rewritten by merge_lora)."""
    spec, folder = MODELS[wildcards.model], f"{RES}/models/{wildcards.model}"
    inputs = {"handle": f"{folder}/model.json", "index": f"{folder}/checkpoints.json"}
    if spec.source == "local":
        inputs["files"] = [str(f) for f in model_files(spec.path)]
    elif spec.source == "toy":
        checkpoints.train_toy.get(model=wildcards.model)
        inputs["files"] = [str(f) for f in model_files(f"{folder}/checkpoints", nested=True)]
    elif spec.source == "lora":
        inputs["files"] = f"{folder}/merged"
        inputs["adapter"] = lora_adapter(wildcards)
        inputs["adapter_files"] = adapter_files(wildcards)
    return inputs


CIRCUIT_METHODS = CFG["circuits"]["methods"]


def circuit_drawings():
    """(method, level) of each circuit drawing: every method's edge-level circuit, then one method's node- and
    neuron-level circuits where circuits.levels has them (the first EAP-IG method's, else the first method's; exact
    scores no neurons)."""
    method = next((m for m in CIRCUIT_METHODS if "IG" in m), CIRCUIT_METHODS[0])
    drawn = ("node",) if method == "exact" else ("node", "neuron")
    levels = [level for level in drawn if level in CFG["circuits"]["levels"]]
    return [(m, "edge") for m in CIRCUIT_METHODS] + [(method, level) for level in levels]


CIRCUIT_DRAWINGS = circuit_drawings()


def circuit_drawing_path(model, op, method, level):
    """A circuit drawing's PNG: ``{method}.png`` at edge level, ``{method}_{level}.png`` at node and neuron level."""
    suffix = "" if level == "edge" else f"_{level}"
    return f"{RES}/figures/{model}/circuits/{op}/{method}{suffix}.png"


def stage_models(stage):
    chosen = CFG[stage]["models"]
    return list(chosen) if chosen is not None else names()


LOCALIZATION_TABLES = ("ie_maps", "neurons", "probes", "paper_circuits", "attention")
LOCALIZATION_FIGURES = ("ie_map", "neurons", "probes", "attention")


def localization_outputs(name):
    return (
        expand(f"{RES}/{name}/{{table}}/{{op}}.parquet", table=LOCALIZATION_TABLES, op=OPS)
        + expand(f"{RES}/figures/{name}/{{figure}}_{{op}}.png", figure=LOCALIZATION_FIGURES, op=OPS)
        + [f"{RES}/figures/{name}/paper_faithfulness.png"]
    )


HEURISTICS_TABLES = ("", "_knockout", "_prompt_knockout", "_maps")


def heuristics_outputs(name):
    return expand(f"{RES}/{name}/heuristics/{{op}}{{table}}.parquet", op=OPS, table=HEURISTICS_TABLES) + expand(
        f"{RES}/figures/{name}/{{figure}}_{{op}}.png", figure=("heuristics", "heuristic_maps"), op=OPS
    )


def circuit_outputs(name):
    return expand(
        [
            f"{RES}/{name}/circuits/{{op}}/faithfulness.parquet",
            f"{RES}/{name}/circuits/{{op}}/agreement.parquet",
            f"{RES}/figures/{name}/faithfulness_{{op}}.png",
        ],
        op=OPS,
    ) + [circuit_drawing_path(name, op, m, level) for op in OPS for m, level in CIRCUIT_DRAWINGS]


POSITION_METHODS = CFG["position_circuits"]["methods"]


def position_outputs(name):
    """The position-aware stage's figures of one circuit model (their tables come with them)."""
    return expand(f"{RES}/figures/{name}/position_circuits/{{op}}/{{method}}.png", op=OPS, method=POSITION_METHODS) + [
        f"{RES}/figures/{name}/position_faithfulness_{op}.png" for op in OPS
    ]


def position_figure_labels(wildcards, figure, method):
    """Report labels of a position-aware figure, the same as :func:`circuit_labels`: operator, figure, method ("all":
    every method), the edge-level CPR (the method's, or the best method's) and the level (the drawing: edge)."""
    areas = f"{RES}/{wildcards.model}/circuits/{wildcards.op}/position_areas.parquet"
    return {
        "operator": wildcards.op,
        "figure": figure,
        "method": method or "all",
        "CPR": cpr_label(areas, method),
        "level": "edge" if method else "all",
    }


def feature_models():
    """The models of the feature-circuit stage (none when it is off)."""
    return stage_models("features") if CFG["features"]["enabled"] else []


def feature_outputs(name):
    """The feature-circuit stage's figures and tables of one model; the heuristics-as-features comparison where the
    model also has the heuristic neurons (a localization model)."""
    outputs = [f"{RES}/figures/{name}/features/dictionary_quality.png", f"{RES}/{name}/features/interventions.parquet"]
    outputs += expand(
        [f"{RES}/figures/{name}/features/graph_{{op}}.png", f"{RES}/figures/{name}/features/faithfulness_{{op}}.png"],
        op=OPS,
    )
    if name in stage_models("localization"):
        outputs += expand(f"{RES}/figures/{name}/features/heuristics_{{op}}.png", op=OPS)
    return outputs


def all_outputs():
    outputs = [f"{RES}/figures/accuracy.png"]
    for name in stage_models("circuits"):
        outputs += circuit_outputs(name)
        if CFG["position_circuits"]["enabled"]:
            outputs += position_outputs(name)
    for name in stage_models("localization"):
        outputs += localization_outputs(name) + heuristics_outputs(name)
        if MODELS[name].checkpoints:
            outputs += [f"{RES}/figures/{name}/checkpoint_ie.png", f"{RES}/figures/{name}/checkpoint_heuristics.png"]
    for name in feature_models():
        outputs += feature_outputs(name)
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


def circuit_labels(wildcards, figure, method, level):
    """Report labels of a circuits figure (called by its report(...) markup when the report is built): the operator,
    figure, method (None: "all", the best one), its CPR at the figure's level (at edge level for a figure of all
    levels) and the level. The operator comes first: Snakemake's report turns a later label with exactly two values
    into a toggle, and with two operators the CPR differs between them, so no complete grid exists to toggle over
    (the page failed to render)."""
    areas = f"{RES}/{wildcards.model}/circuits/{wildcards.op}/areas.parquet"
    cpr = cpr_label(areas, method, "edge" if level == "all" else level)
    return {"operator": wildcards.op, "figure": figure, "method": method or "all", "CPR": cpr, "level": level}
