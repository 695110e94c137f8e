"""Every bad config value stops the run before any job with one line naming the field (dotted path) and the fix.

Each case is a small mutation of the default ``config.yaml``: (dotted path, new value) pairs (``DROP`` deletes the
key), the field the message must start with, and a pattern the rest of the message must contain.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from circuitflow.config import load_workflow_config
from circuitflow.models.registry import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())
DROP = object()
TOY = "models.toy.recipe"
LORA = "models.toy-addsub-lora.adapter"

# (case id, {dotted path: value}, field the message starts with, pattern in the message)
CASES = [
    ("lr-negative", {f"{TOY}.lr": -0.003}, f"{TOY}.lr", r"-0.003 is not greater than 0; use a value above 0"),
    ("lr-text", {f"{TOY}.lr": "3e-3"}, f"{TOY}.lr", r"'3e-3' is not a number; write a plain number .* 0.003"),
    ("d_model-negative", {f"{TOY}.d_model": -64}, f"{TOY}.d_model", r"less than the minimum of 1"),
    ("d_mlp-zero", {f"{TOY}.d_mlp": 0}, f"{TOY}.d_mlp", r"0 is less than the minimum of 1"),
    ("n_layers-text", {f"{TOY}.n_layers": "two"}, f"{TOY}.n_layers", r"'two' is not an integer; give an integer"),
    ("n_layers-zero", {f"{TOY}.n_layers": 0}, f"{TOY}.n_layers", r"0 is less than the minimum of 1"),
    ("n_heads-float", {f"{TOY}.n_heads": 2.5}, f"{TOY}.n_heads", r"not an integer"),
    ("checkpoint_steps-scalar", {f"{TOY}.checkpoint_steps": 1000}, f"{TOY}.checkpoint_steps",
     r"1000 is not a list; write a list, e.g. \[1000\]"),
    ("checkpoint_steps-beyond", {f"{TOY}.checkpoint_steps": [0, 7000]}, f"{TOY}.checkpoint_steps",
     r"\[7000\] lie outside 0..steps=6500; drop them or raise steps"),
    ("checkpoint_steps-duplicate", {f"{TOY}.checkpoint_steps": [0, 0]}, f"{TOY}.checkpoint_steps",
     r"\[0\] appear more than once"),
    ("steps-zero", {f"{TOY}.steps": 0}, f"{TOY}.steps", r"less than the minimum of 1"),
    ("n_heads-indivisible", {f"{TOY}.n_heads": 3}, f"{TOY}.d_model", r"divisible by n_heads=3"),
    ("llama-odd-head", {TOY: {"architecture": "llama", "d_model": 12, "n_heads": 4}}, f"{TOY}.d_model",
     r"head size .* must be even"),
    ("heldout-one", {f"{TOY}.heldout_fraction": 1.0}, f"{TOY}.heldout_fraction", r"not less than 1"),
    ("rotary-zero", {f"{TOY}.rotary_pct": 0}, f"{TOY}.rotary_pct", r"not greater than 0"),
    ("recipe-batch-zero", {f"{TOY}.batch_size": 0}, f"{TOY}.batch_size", r"minimum of 1"),
    ("recipe-seed-negative", {f"{TOY}.seed": -1}, f"{TOY}.seed", r"minimum of 0"),
    ("recipe-operator-unknown", {f"{TOY}.operators": ["add", "pow"]}, f"{TOY}.operators.1", r"'pow' is not one of"),
    ("recipe-unknown-key", {f"{TOY}.layers": 3}, f"{TOY}.layers", r"unknown key; .*n_layers"),
    ("max_number-zero", {f"{TOY}.max_number": 0}, f"{TOY}.max_number", r"minimum of 1"),
    ("adapter-operator-unknown", {f"{LORA}.train.operators": ["add", "pow"]}, f"{LORA}.train.operators.1",
     r"'pow' is not one of add, sub, mul, div"),
    ("adapter-rank-negative", {f"{LORA}.train.rank": -8}, f"{LORA}.train.rank", r"minimum of 1"),
    ("adapter-rank-zero", {f"{LORA}.train.rank": 0}, f"{LORA}.train.rank", r"minimum of 1"),
    ("adapter-alpha-zero", {f"{LORA}.train.alpha": 0}, f"{LORA}.train.alpha", r"not greater than 0"),
    ("adapter-alpha-negative", {f"{LORA}.train.alpha": -16}, f"{LORA}.train.alpha", r"not greater than 0"),
    ("adapter-steps-zero", {f"{LORA}.train.steps": 0}, f"{LORA}.train.steps", r"minimum of 1"),
    ("adapter-lr-text", {f"{LORA}.train.lr": "1e-3"}, f"{LORA}.train.lr", r"not a number"),
    ("adapter-unknown-key", {f"{LORA}.train.ranks": 8}, f"{LORA}.train.ranks", r"unknown key; .*rank"),
    ("adapter-target-unknown", {f"{LORA}.train.target_modules": ["q_proj"]}, f"{LORA}.train.target_modules",
     r"\['q_proj'\] are not projections of toy \(gpt_neox\)"),
    ("adapter-target-empty", {f"{LORA}.train.target_modules": []}, f"{LORA}.train.target_modules",
     r"needs at least 1 item"),
    ("adapter-train-and-path", {f"{LORA}.path": "x"}, LORA, r"exactly one of adapter.train .* or adapter.path"),
    ("adapter-neither", {f"{LORA}.train": DROP}, LORA, r"exactly one of adapter.train .* or adapter.path"),
    ("device-typo", {"device": "cpux"}, "device", r"'cpux' is not valid; use auto, cpu, cuda, cuda:N or mps$"),
    ("device-empty", {"device": ""}, "device", r"use auto, cpu"),
    ("results-empty", {"results": ""}, "results", r"name a folder"),
    ("results-blank", {"results": "  "}, "results", r"'  ' is not valid; name a folder"),
    ("results-root", {"results": "/"}, "results", r"filesystem root; name a folder"),
    ("results-root-dotdot", {"results": "/tmp/.."}, "results", r"filesystem root"),
    ("results-tilde", {"results": "~/results"}, "results", r"'~' is not expanded"),
    ("results-number", {"results": 5}, "results", r"5 is not a string"),
    ("model-without-source", {"models.mine": {"recipe": {"n_layers": 2}}}, "models.mine.source",
     r"missing; add source: toy, hub, local or lora"),
    ("model-source-unknown", {"models.mine": {"source": "hf"}}, "models.mine.source", r"'hf' is not one of"),
    ("hub-without-repo", {"models.mine": {"source": "hub"}}, "models.mine.repo_id", r"missing; add repo_id"),
    ("hub-empty-revision", {"models.mine": {"source": "hub", "repo_id": "a/b", "revision": ""}},
     "models.mine.revision", r"must not be empty"),
    ("hub-steps-duplicate", {"models.mine": {"source": "hub", "repo_id": "a/b", "steps": [1, 1]}},
     "models.mine.steps", r"\[1\] appear more than once"),
    ("local-empty-path", {"models.mine": {"source": "local", "path": ""}}, "models.mine.path", r"must not be empty"),
    ("lora-empty-base-revision", {"models.toy-addsub-lora.base_revision": ""}, "models.toy-addsub-lora.base_revision",
     r"must not be empty"),
    ("model-name", {"models.my model": {"source": "toy"}}, "models",
     r"'my model' is not valid; name models with letters"),
    ("models-empty", {"models": {}}, "models", r"needs at least 1 entry"),
    ("models-missing", {"models": DROP}, "models", r"missing; add models: with at least one model"),
    ("answer_max-too-low", {"prompts.answer_max": 5}, "prompts.k",
     r"only \d+ legal add prompts .* answers 0..5; lower prompts.k or raise prompts.answer_max \(at most 99\)$"),
    ("k-too-high", {"prompts.k": 700}, "prompts.k", r"only 672 legal mul prompts .* larger max_number"),
    ("k-zero", {"prompts.k": 0}, "prompts.k", r"minimum of 1"),
    ("separator-empty", {"prompts.few_shot_separator": ""}, "prompts.few_shot_separator", r"must not be empty"),
    ("operand_max-text", {"prompts.operand_max": "99"}, "prompts.operand_max",
     r"'99' is not an integer; write a plain number without quotes, e.g. 99$"),
    ("top_heads-too-many", {"localization.top_heads": 100}, "localization.top_heads",
     r"toy has only 8 heads \(2 layers x 4\); use at most 8"),
    ("attention_heads-too-many", {"localization.attention_heads": 9}, "localization.attention_heads", r"at most 8"),
    ("heuristic-neurons-too-many", {"heuristics.neurons_per_layer": 1000}, "heuristics.neurons_per_layer",
     r"toy has only 256 neurons per layer \(d_mlp\); use at most 256"),
    ("knockout-beyond-classified", {"heuristics.knockout_neurons_per_layer": [1, 100]},
     "heuristics.knockout_neurons_per_layer", r"\[100\] exceed heuristics.neurons_per_layer=64"),
    ("map-neurons-too-many", {"heuristics.map_neurons": 200}, "heuristics.map_neurons",
     r"at most 128 neurons of toy are classified \(2 layers x heuristics.neurons_per_layer\); use at most 128"),
    ("device_map-typo", {"device_map": "autoo"}, "device_map", r"'autoo' is not valid; use auto, balanced"),
    ("seeds-duplicate", {"localization.seeds": [0, 0]}, "localization.seeds", r"\[0\] appear more than once"),
    ("operators-duplicate", {"operators": ["add", "add"]}, "operators", r"\['add'\] appear more than once"),
    ("operators-empty", {"operators": []}, "operators", r"needs at least 1 item"),
    ("methods-duplicate", {"circuits.methods": ["EAP", "exact", "EAP"]}, "circuits.methods",
     r"\['EAP'\] appear more than once; list each value once"),
    ("random_seeds-duplicate", {"localization.random_seeds": [1, 1]}, "localization.random_seeds", r"\[1\] appear"),
    ("circuit-models-duplicate", {"circuits.models": ["toy", "toy"]}, "circuits.models", r"appear more than once"),
    ("localization-models-duplicate", {"localization.models": ["toy", "toy"]}, "localization.models", r"appear"),
    ("neurons_per_layer-duplicate", {"localization.neurons_per_layer": [1, 1]}, "localization.neurons_per_layer",
     r"appear"),
    ("exact-layers-duplicate", {"localization.exact_neuron_layers": [1, 1]}, "localization.exact_neuron_layers",
     r"appear"),
    ("fractions-duplicate", {"circuits.fractions": [0.1, 0.1]}, "circuits.fractions", r"appear"),
    ("moduli-duplicate", {"heuristics.moduli": [2, 2]}, "heuristics.moduli", r"appear"),
    ("heuristic-checkpoints-duplicate", {"heuristics.checkpoint_steps": [0, 0]}, "heuristics.checkpoint_steps",
     r"appear"),
    ("seed-negative", {"seed": -1}, "seed", r"minimum of 0"),
    ("batch_size-text", {"batch_size": "big"}, "batch_size", r"'big' is not an integer; give an integer$"),
    ("dtype-unknown", {"dtype": "float64"}, "dtype", r"'float64' is not one of float32, bfloat16, float16"),
    ("ig_steps-zero", {"circuits.ig_steps": 0}, "circuits.ig_steps", r"minimum of 1"),
    ("probe-threshold-zero", {"localization.probe_threshold": 0}, "localization.probe_threshold", r"not greater"),
]


def mutate(changes: dict) -> dict:
    """The default config with each ``dotted.path: value`` set (``DROP`` deletes the key)."""
    config = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return config


@pytest.mark.parametrize(("changes", "field", "pattern"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_value_is_one_line_naming_the_field(changes, field, pattern):
    with pytest.raises(ConfigError) as err:
        load_workflow_config(mutate(changes), SCHEMA)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    assert re.match(rf"{re.escape(field)}[:= ]", message), message
    assert re.search(pattern, message), message


def test_table_is_large_and_ids_are_unique():
    assert len(CASES) >= 50 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("device", "cuda", "count", "mps", "pattern"), [
    ("cuda", False, 0, False, r"^device=cuda: torch sees 0 CUDA device\(s\) on this machine; use auto or cpu$"),
    ("cuda:2", True, 2, False, r"^device=cuda:2: torch sees 2 CUDA .*; use auto, cpu or cuda:0..cuda:1$"),
    ("mps", False, 0, False, r"^device=mps: torch sees no MPS device on this machine; use auto or cpu$"),
])
def test_device_is_checked_against_what_torch_sees(monkeypatch, device, cuda, count, mps, pattern):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    with pytest.raises(ConfigError, match=pattern):
        load_workflow_config(mutate({"device": device}), SCHEMA)


def test_visible_devices_and_auto_pass(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_workflow_config(mutate({"device": device}), SCHEMA)[0]["device"] == device


WORKFLOW_CASES = ["lr-text", "adapter-rank-negative", "results-root"]


@pytest.mark.workflow
def test_a_run_stops_before_any_job_with_one_line_and_touches_no_output(tmp_path):
    """A real run (not a dry run): the config is checked when the workflow is parsed, before any job."""
    sentinel = tmp_path / "results/models/toy/model.json"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text('{"good": "output"}')
    stamp = sentinel.stat().st_mtime_ns
    by_id = {case[0]: case for case in CASES}
    for case_id in WORKFLOW_CASES:
        _, changes, field, _ = by_id[case_id]
        configfile = tmp_path / f"{case_id}.yaml"
        configfile.write_text(yaml.safe_dump(mutate(changes)))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
               "--configfile", str(configfile), "--cores", "1"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        output = (done.stdout + done.stderr).strip()
        assert done.returncode != 0, output
        assert "\n" not in output and output.startswith(f"config error: {field}"), output
        assert sentinel.read_text() == '{"good": "output"}' and sentinel.stat().st_mtime_ns == stamp


@pytest.mark.workflow
def test_offline_a_hub_model_missing_from_the_cache_stops_before_any_job(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty HF_HOME: one line naming the model, the revision and the fix; no job runs."""
    import os

    config = mutate({"models.pythia": {"source": "hub", "repo_id": "EleutherAI/pythia-14m", "revision": "step1000"}})
    configfile = tmp_path / "offline.yaml"
    configfile.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(configfile), "--cores", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and "\n" not in output, output
    cache = tmp_path / "hf" / "hub"
    assert output.startswith("config error: models.pythia: EleutherAI/pythia-14m@step1000 is not in the Hugging Face "
                             f"cache {cache} and HF_HUB_OFFLINE is set; download it once online"), output
    assert not (tmp_path / "results").exists()
