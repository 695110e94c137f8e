"""The tiny DAG on a real one-node SLURM cluster (tests/cluster/slurm.py: Debian's slurmctld, slurmd and munge on this
machine, no accounting) through the shipped profile workflow/profiles/slurm, with only a node-size overlay: jobs'
threads and memory capped to what the node has, short status-check intervals, and the per-operator model jobs
submitted together as one group job (each SLURM job costs two workflow parses, ~15 s on two cores, while a tiny job
computes for seconds). The cluster builds every output of one operator (``OP``) and the training figure: every
per-operator rule and everything upstream of them — the toy, its checkpoints, the LoRA, the dictionaries — but not
the other operators' copies of the same jobs, which a group job would run one after another (CI time). Its files must
be the local run's (the session fixture ``tiny_workdir``) and its tables equal them, no job may ask for a GPU
(tiny.yaml says device: cpu), and the light rules must run on the submitting node."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.cluster.slurm import local_slurm, missing_requirements, node_size
from tests.integration.conftest import ROOT, TINY

PROFILE = ROOT / "workflow/profiles/slurm"
LOCAL_THREADS = 2  # the local run's --cores: model jobs get the same threads on the cluster, so the same arithmetic
# Submitted one by one (toy training with its own memory, the LoRA and its merge); every other submitted rule's jobs
# go to SLURM together as one group job. Both ways run through the shipped profile's executor settings.
ALONE = ("train_toy", "finetune_toy_lora", "merge_lora")
GROUP = "tiny"
OP = "add"  # the operator whose outputs the cluster builds


def _skip_reason() -> str | None:
    """Why this test cannot run here, or None."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -c requirements.lock.txt -e '.[slurm]')"
    return missing_requirements()


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _capped(resources: dict, mem_mb: int) -> dict:
    """``resources`` with ``mem_mb`` lowered to ``mem_mb`` where it asks for more."""
    return {**resources, "mem_mb": min(resources["mem_mb"], mem_mb)} if "mem_mb" in resources else resources


def node_overlay(profile: dict, cpus: int, mem_mb: int, grouped: set[str]) -> dict:
    """The profile entries a node of ``cpus`` CPUs and ``mem_mb`` MB overrides: threads and every job's memory capped
    (half the node; the real-model defaults ask for more than a CI machine has), status checks every few seconds
    instead of every 15+ (the tiny jobs take seconds), and the ``grouped`` rules in one group job, which the cores and
    memory limits keep within what one job may ask for (its jobs then run one after another, as here). Nothing else
    changes."""
    half, cores = mem_mb // 2, min(cpus, LOCAL_THREADS)
    return {
        "max-threads": cores,
        "cores": cores,
        "resources": {"mem_mb": half},
        "slurm-init-seconds-before-status-checks": 2,
        "seconds-between-status-checks": 2,
        "slurm-keep-successful-logs": True,  # test_light_rules_run_locally reads which rules each job ran
        "default-resources": _capped(profile["default-resources"], half),
        "set-resources": {rule: _capped(res, half) for rule, res in profile["set-resources"].items()},
        "groups": {rule: GROUP for rule in sorted(grouped)},
        "group-components": {GROUP: 1000},  # every connected part of the group in the same job
    }


def local_rule_names() -> set[str]:
    """The rules of workflow/rules/cluster.smk's ``localrules:``."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", (ROOT / "workflow/rules/cluster.smk").read_text(), re.M)
    return set(re.findall(r"\w+", block.group(1)))


def submitted_rules(run: Path) -> set[str]:
    """The rules a cluster run submits: those ``run`` ran outside localrules."""
    return ran_rules(run) - local_rule_names()


def submitted_jobs(env: dict[str, str]) -> list[str]:
    """``scontrol show job`` of every job the cluster still knows (MinJobAge keeps finished ones), one line each."""
    done = subprocess.run(["scontrol", "show", "job", "--oneliner"], env=env, capture_output=True, text=True,
                          timeout=30, check=True)
    return [line for line in done.stdout.splitlines() if line.startswith("JobId=")]


def rules_of(job_line: str) -> set[str]:
    """The rules of the jobs a submitted SLURM job ran: the rule headers Snakemake wrote to its output file."""
    log = Path(re.search(r"\bStdOut=(\S+)", job_line).group(1)).read_text()
    return set(re.findall(r"^(?:rule|checkpoint) (\w+):$", log, re.MULTILINE))


def result_files(workdir: Path) -> set[str]:
    return {str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*") if p.is_file()}


def operator_targets(local_run: Path, op: str) -> list[str]:
    """The local run's outputs of one operator (``op`` a component of the path or of the file name), with a
    ``directory()`` output (the folder holding Snakemake's ``.snakemake_timestamp``) named as the folder; plus the
    training figure (a light rule upstream of no operator)."""
    named = re.compile(rf"(^|[/_.]){op}([/_.]|$)")
    folders = {str(p.parent.relative_to(local_run)) for p in (local_run / "results").rglob(".snakemake_timestamp")}
    outputs = set()
    for path in result_files(local_run):
        if path.startswith(("results/logs/", "results/benchmarks/")) or not named.search(path):
            continue
        outputs.add(next((folder for folder in folders if path.startswith(folder + "/")), path))
    return sorted(outputs) + ["results/figures/toy/training.png"]


def ran_rules(workdir: Path) -> set[str]:
    """The rules a run ran: one benchmark folder each."""
    return {p.name for p in (workdir / "results/benchmarks").iterdir()}


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, tiny_workdir):
    """One operator's part of the tiny DAG run on a fresh local cluster: (workdir, completed snakemake process, jobs'
    scontrol lines). Asks for ``tiny_workdir`` so the local run finishes first instead of competing for the same
    cores."""
    base = tmp_path_factory.mktemp("slurm")
    workdir, overlay = base / "work", base / "node_overlay"
    workdir.mkdir()
    overlay.mkdir()
    cpus, mem_mb = node_size()
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    grouped = submitted_rules(tiny_workdir) - set(ALONE)
    (overlay / "config.yaml").write_text(yaml.safe_dump(node_overlay(profile, cpus, mem_mb, grouped)))
    with local_slurm(base / "cluster") as env:
        # what `make test` exports: torch's OpenMP threads wait passively (no change to any result, much faster on
        # shared cores)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(TINY), "--profile", str(PROFILE), "--profile", str(overlay),
               *operator_targets(tiny_workdir, OP)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2700)
        jobs = submitted_jobs(env)
    return workdir, done, jobs


def test_tiny_dag_runs_on_slurm(cluster_run):
    workdir, done, jobs = cluster_run
    assert done.returncode == 0, done.stderr[-6000:]
    assert jobs, "no job was submitted to SLURM"


def test_same_files_as_the_local_run(cluster_run, tiny_workdir):
    """The cluster wrote only files the local run wrote, and every output of the operator (folders' contents too)."""
    workdir, done, _ = cluster_run
    assert done.returncode == 0
    cluster, local = result_files(workdir), result_files(tiny_workdir)
    assert cluster <= local, sorted(cluster - local)
    for target in operator_targets(tiny_workdir, OP):
        assert {p for p in local if p == target or p.startswith(target + "/")} <= cluster, target
    # every rule the local run ran for the operator ran here: the operator-wide subset is the whole DAG but the copies
    assert ran_rules(workdir) >= {"train_toy", "prompts", "attribute", "dictionaries", "feature_graphs", "heuristics"}


def test_same_tables_as_the_local_run(cluster_run, tiny_workdir):
    """Every parquet table equals the local run's exactly: the same code, seeds and threads per job on the same
    machine give the same floating-point order, and the toy trains with a fixed 2 threads."""
    workdir, done, _ = cluster_run
    assert done.returncode == 0
    tables = sorted(p for p in result_files(workdir) if p.endswith(".parquet"))
    assert len(tables) > 10
    for rel in tables:
        pd.testing.assert_frame_equal(pd.read_parquet(workdir / rel), pd.read_parquet(tiny_workdir / rel),
                                      check_exact=True, obj=rel)


def test_no_job_asks_for_a_gpu(cluster_run):
    """tiny.yaml says device: cpu, so the rules' gpu=GPU is 0 and sbatch gets no --gpus (the node has none)."""
    _, done, jobs = cluster_run
    assert done.returncode == 0
    assert [line for line in jobs if "gpu" in line.lower()] == []
    assert all(int(re.search(r"\bNumCPUs=(\d+)", line).group(1)) <= LOCAL_THREADS for line in jobs)


def test_light_rules_run_locally(cluster_run, tiny_workdir):
    """Exactly the rules outside cluster.smk's localrules were submitted (those of ALONE one job each, the others in
    group jobs); plots and digests ran here."""
    _, done, jobs = cluster_run
    assert done.returncode == 0
    workdir = cluster_run[0]
    ran = ran_rules(workdir)
    by_job = [rules_of(line) for line in jobs]
    assert all(by_job), "a submitted job ran no rule"
    submitted = set().union(*by_job)
    assert submitted == submitted_rules(workdir)
    assert {"train_toy", "prompts", "attribute"} <= submitted
    assert {"model_digest", "plot_training", "plot_feature_graph"} <= ran - submitted
    assert sorted(rules for rules in map(sorted, by_job) if len(rules) == 1) == [[rule] for rule in sorted(ALONE)]
    # the grouped rules went to SLURM as group jobs: one per part of the group that becomes ready on its own (the
    # toy's jobs after its training, the LoRA model's after its merge: one operator's DAG has no job joining them)
    grouped = [line for line, rules in zip(jobs, by_job) if len(rules) > 1]
    assert 1 <= len(grouped) <= 2, "the grouped rules did not share group jobs"
    assert all(f"/group_{GROUP}_" in re.search(r"\bStdOut=(\S+)", line).group(1) for line in grouped)
