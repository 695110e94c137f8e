"""The shipped SLURM profile (workflow/profiles/slurm) against the workflow: it names only rules that exist, forces no
GPU, keeps the light rules on the login node (workflow/rules/cluster.smk), and checks status without accounting."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILE = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
# Rules that only read tables or files and write small ones, or need the internet (download_model).
LIGHT = {"report", "draw_circuits", "draw_position_circuits", "register_local", "download_model", "model_digest", "accuracy"}


def workflow_rules() -> set[str]:
    """Names of every rule and checkpoint in the Snakefile and workflow/rules/*.smk."""
    texts = [p.read_text() for p in [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]]
    return {m for text in texts for m in re.findall(r"^(?:rule|checkpoint) (\w+):", text, flags=re.M)}


def local_rules() -> set[str]:
    """The rules in workflow/rules/cluster.smk's ``localrules:``."""
    text = (ROOT / "workflow/rules/cluster.smk").read_text()
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", text, flags=re.M)
    assert block, "workflow/rules/cluster.smk has no localrules: block"
    return set(re.findall(r"\w+", block.group(1)))


def test_profile_names_only_existing_rules():
    named = set(PROFILE.get("set-resources", {})) | set(PROFILE.get("set-threads", {}) or {})
    assert named, "the profile sets no per-rule resources"
    assert named <= workflow_rules(), f"unknown rules in the profile: {named - workflow_rules()}"


def test_no_rule_is_forced_to_a_gpu():
    """GPUs come from the rules' gpu=GPU (the config's device), never from the profile."""
    assert "gpu" not in PROFILE["default-resources"]
    forced = {rule: res for rule, res in PROFILE["set-resources"].items() if {"gpu", "gres", "gpu_model"} & set(res)}
    assert forced == {}


def test_light_rules_run_on_the_login_node():
    rules = workflow_rules()
    light = LIGHT | {r for r in rules if r.startswith("plot_")}
    assert light <= rules, f"light rules missing from the workflow: {light - rules}"
    assert local_rules() == light
    assert not light & set(PROFILE["set-resources"]), "a local rule needs no cluster resources"


def test_tiny_jobs_do_not_ask_for_real_model_resources():
    """The toy training jobs get the measured size, not the real-model default (they would queue for 32 GB)."""
    for rule in ("train_toy", "finetune_toy_lora"):
        assert PROFILE["set-resources"][rule]["mem_mb"] <= 4000
        assert PROFILE["set-resources"][rule]["runtime"] <= 60


def test_status_checks_work_without_accounting():
    assert PROFILE["slurm-status-command"] == "squeue"
    assert "slurm_partition" not in PROFILE["default-resources"], "a partition name is the user's to set"


@pytest.mark.parametrize(("gpu", "flag"), [(0, ""), (1, " --gpus=1")])
def test_gpu_resource_becomes_exactly_one_gpu(gpu, flag):
    """The executor turns the rules' gpu=1 into one GPU and gpu=0 (device: cpu) into none."""
    utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils", reason="snakemake-executor-plugin-slurm "
                                "is not installed (pip install -c requirements.lock.txt -e '.[slurm]')")
    job = SimpleNamespace(resources=SimpleNamespace(get={"gpu": gpu}.get))
    assert utils.set_gres_string(job) == flag
