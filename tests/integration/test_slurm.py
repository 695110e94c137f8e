"""The tiny DAG on a real one-node SLURM cluster (tests/cluster/slurm.py: Debian's slurmctld, slurmd and munge on this
machine, no accounting) through the shipped profile workflow/profiles/slurm, with only a node-size overlay: jobs'
threads and memory capped to what the node has, and short status-check intervals. Its tables must equal the local
run's (the session fixture ``tiny_workdir``), no job may ask for a GPU (tiny.yaml says device: cpu), and the light
rules must run on the submitting node."""

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


def _skip_reason() -> str | None:
    """Why this test cannot run here, or None."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -c requirements.lock.txt -e '.[slurm]')"
    return missing_requirements()


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _capped(resources: dict, mem_mb: int) -> dict:
    """``resources`` with ``mem_mb`` lowered to ``mem_mb`` where it asks for more."""
    return {**resources, "mem_mb": min(resources["mem_mb"], mem_mb)} if "mem_mb" in resources else resources


def node_overlay(profile: dict, cpus: int, mem_mb: int) -> dict:
    """The profile entries a node of ``cpus`` CPUs and ``mem_mb`` MB overrides: threads and every job's memory capped
    (half the node, so two jobs fit side by side; the real-model defaults ask for more than a CI machine has), and
    status checks every few seconds instead of every 15+ (the tiny jobs take seconds). Nothing else changes."""
    half = mem_mb // 2
    return {
        "max-threads": min(cpus, LOCAL_THREADS),
        "slurm-init-seconds-before-status-checks": 2,
        "seconds-between-status-checks": 2,
        "default-resources": _capped(profile["default-resources"], half),
        "set-resources": {rule: _capped(res, half) for rule, res in profile["set-resources"].items()},
    }


def local_rule_names() -> set[str]:
    """The rules of workflow/rules/cluster.smk's ``localrules:``."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", (ROOT / "workflow/rules/cluster.smk").read_text(), re.M)
    return set(re.findall(r"\w+", block.group(1)))


def submitted_jobs(env: dict[str, str]) -> list[str]:
    """``scontrol show job`` of every job the cluster still knows (MinJobAge keeps finished ones), one line each."""
    done = subprocess.run(["scontrol", "show", "job", "--oneliner"], env=env, capture_output=True, text=True,
                          timeout=30, check=True)
    return [line for line in done.stdout.splitlines() if line.startswith("JobId=")]


def rule_of(job_line: str) -> str:
    """The rule of a job submitted by the SLURM executor (its comment is ``rule_{name}_wildcards_...``)."""
    return re.search(r"\bComment=rule_(\w+?)(?:_wildcards_\S*)?(?:\s|$)", job_line).group(1)


def result_files(workdir: Path) -> set[str]:
    return {str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, tiny_workdir):
    """The tiny DAG run on a fresh local cluster: (workdir, completed snakemake process, jobs' scontrol lines). Asks
    for ``tiny_workdir`` so the local run finishes first instead of competing for the same cores."""
    base = tmp_path_factory.mktemp("slurm")
    workdir, overlay = base / "work", base / "node_overlay"
    workdir.mkdir()
    overlay.mkdir()
    cpus, mem_mb = node_size()
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    (overlay / "config.yaml").write_text(yaml.safe_dump(node_overlay(profile, cpus, mem_mb)))
    with local_slurm(base / "cluster") as env:
        # what `make test` exports: torch's OpenMP threads wait passively (no change to any result, much faster on
        # shared cores)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(TINY), "--profile", str(PROFILE), "--profile", str(overlay)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
        jobs = submitted_jobs(env)
    return workdir, done, jobs


def test_tiny_dag_runs_on_slurm(cluster_run):
    workdir, done, jobs = cluster_run
    assert done.returncode == 0, done.stderr[-6000:]
    assert jobs, "no job was submitted to SLURM"


def test_same_files_as_the_local_run(cluster_run, tiny_workdir):
    workdir, done, _ = cluster_run
    assert done.returncode == 0
    assert result_files(workdir) == result_files(tiny_workdir)


def test_same_tables_as_the_local_run(cluster_run, tiny_workdir):
    """Every parquet table equals the local run's exactly: the same code, seeds and threads per job on the same
    machine give the same floating-point order, and the toy trains with a fixed 2 threads."""
    workdir, done, _ = cluster_run
    assert done.returncode == 0
    tables = sorted(p for p in result_files(tiny_workdir) if p.endswith(".parquet"))
    assert len(tables) > 20
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
    """Exactly the rules outside cluster.smk's localrules were submitted; plots, report and digests ran here."""
    _, done, jobs = cluster_run
    assert done.returncode == 0
    submitted = {rule_of(line) for line in jobs}
    ran = {p.name for p in (tiny_workdir / "results/benchmarks").iterdir()}
    assert submitted == ran - local_rule_names()
    assert {"train_toy", "prompts", "attribute"} <= submitted
    assert {"model_digest", "plot_training", "report"} <= ran - submitted
