"""Reruns cost only what changed: on a copy of the session's finished tiny run, a changed config key plans exactly the
jobs that read it (and their consumers), performance settings plan nothing, a real scoped rerun touches nothing
else and a no-op rerun takes seconds. Every table and graph records its provenance; every job its benchmark."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from circuitflow.provenance import read_provenance
from tests.integration.conftest import ROOT, TINY, copy_run

pytestmark = pytest.mark.workflow


def tiny_config() -> dict:
    """tests/configs/tiny.yaml: the config of the session's finished run."""
    return yaml.safe_load(TINY.read_text())


def base_config() -> dict:
    """tests/configs/tiny.yaml with one operator, one model and fewer methods, seeds, checkpoints (faster)."""
    config = tiny_config()
    config["operators"] = ["add"]
    config["models"] = {"toy": config["models"]["toy"]}
    config["models"]["toy"]["recipe"]["checkpoint_steps"] = [0, 300]
    config["circuits"]["methods"] = ["EAP", "exact"]
    config["localization"]["seeds"] = [0]
    config["features"]["enabled"] = False  # the shared tiny run and test_workflow cover the feature stage
    return config


def write_config(folder: Path, name: str, base: dict | None = None, **changes) -> Path:
    """``base`` (default :func:`base_config`) with ``changes`` (``section__key=value`` or ``key=value``) written to
    ``folder/name.yaml``."""
    config = copy.deepcopy(base_config() if base is None else base)
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        target = config
        for section in sections:
            target = target[section]
        target[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # keys in the file's order (params compare dicts in order)
    return path


def snakemake(workdir: Path, configfile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


def rules_in(run: subprocess.CompletedProcess) -> set[str]:
    """The rules of the jobs a (dry) run lists."""
    assert run.returncode == 0, run.stderr[-3000:]
    return set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", run.stdout + run.stderr, re.MULTILINE))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_workdir) -> Path:
    """A copy of the session's finished tiny run: these tests rerun jobs in it."""
    return copy_run(tiny_workdir, tmp_path_factory.mktemp("reruns") / "work")


@pytest.mark.parametrize("changes, expected", [
    (dict(circuits__draw_edges=5), {"draw_circuits", "report", "all"}),
    (dict(localization__attention_heads=1), {"attention", "plot_localization", "report", "all"}),
    (dict(localization__exact_neuron_layers=[]),  # neuron scores and their consumers, not the IE maps or attention
     {"neuron_scores", "paper_circuits", "heuristics", "checkpoint_heuristics", "plot_localization",
      "plot_paper_faithfulness", "plot_heuristics", "plot_checkpoint_heuristics", "feature_heuristics",
      "plot_feature_heuristics", "report", "all"}),
])
def test_a_changed_key_plans_only_the_jobs_that_read_it(workdir, changes, expected):
    assert rules_in(snakemake(workdir, write_config(workdir, "changed", tiny_config(), **changes), "-n")) == expected


def test_performance_settings_plan_nothing(workdir):
    changed = write_config(workdir, "performance", tiny_config(), batch_size=7, device_map="auto",
                           circuits__batch_size=3, localization__batch_size=2)
    run = snakemake(workdir, changed, "-n")
    assert rules_in(run) == set() and "Nothing to be done" in run.stdout + run.stderr


def test_outputs_record_their_provenance_and_jobs_their_benchmarks(workdir):
    import torch

    from circuitflow.circuits import Graph

    config = tiny_config()
    results = workdir / "results"
    tables = [p for p in results.rglob("*.parquet") if ".partial" not in p.parts]
    assert len(tables) >= 20
    for path in tables:
        record = read_provenance(path)
        assert record is not None, path
        rel = path.relative_to(results)
        model = rel.parts[1] if rel.parts[0] == "models" else rel.parts[0]  # results/[models/]<model>/...
        assert record["model"] == model and record["git"]["commit"] and record["packages"]["torch"], path
        assert len(record["config_hash"]) == 12 and len(record["code"]) == 12, path
    assert {read_provenance(p)["model"] for p in tables} == set(config["models"])
    ie_map = read_provenance(results / "toy/ie_maps/add.parquet")
    assert ie_map["revision"] == f"step{config['models']['toy']['recipe']['steps']}"
    assert ie_map["config"]["loc"] == {"seeds": config["localization"]["seeds"]}
    assert "batch_size" not in str(ie_map["config"])  # performance settings are not part of a job's config
    graph = Graph.load(results / "toy/graphs/add/EAP.pt")
    assert graph.meta["provenance"]["config"]["circuits"]["methods"] == config["circuits"]["methods"]
    assert graph.meta["provenance"]["packages"]["torch"] == torch.__version__
    bench = pd.read_csv(results / "benchmarks/attribute/toy_add.tsv", sep="\t")
    assert {"s", "max_rss"} <= set(bench.columns) and bench["s"].iloc[0] > 0
    assert {p.parent.name for p in (results / "benchmarks").rglob("*.tsv")} >= {"train_toy", "ie_maps", "report"}


def test_a_scoped_rerun_touches_only_the_drawings_and_a_noop_rerun_is_fast(workdir):
    """Also: a job run again unchanged writes the same bytes, so (Snakemake compares small files by checksum) its
    consumers do not rerun."""
    results = workdir / "results"
    drawings = sorted((results / "figures/toy/circuits").rglob("*.png"))
    others = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file() and p.suffix != ".png"
              and not {"logs", "benchmarks", "tables"} & set(p.parts)}  # tables/: the report's pages (config shown)
    before = {p: p.stat().st_mtime_ns for p in drawings}
    changed = write_config(workdir, "drawn", tiny_config(), circuits__draw_edges=5)
    assert rules_in(snakemake(workdir, changed)) == {"draw_circuits", "report", "all"}
    assert all(p.stat().st_mtime_ns != before[p] for p in drawings)
    assert others == {p: p.stat().st_mtime_ns for p in others}
    accuracy = results / "toy/accuracy.parquet"
    written = accuracy.read_bytes()
    assert rules_in(snakemake(workdir, changed, "--force", "results/toy/accuracy.parquet")) == {"accuracy"}
    assert accuracy.read_bytes() == written
    start = time.perf_counter()
    run = snakemake(workdir, changed)
    seconds = time.perf_counter() - start
    assert "Nothing to be done" in run.stdout + run.stderr
    assert seconds < 10, f"a no-op rerun took {seconds:.1f} s (about 4 s expected)"


def test_a_moved_checkout_plans_nothing_on_a_finished_run(workdir, tmp_path):
    """No job's params name where the checkout lives (caption texts, not their folder): the Snakefile and workflow/
    copied elsewhere find the finished run up to date."""
    import shutil

    assert snakemake(workdir, TINY).returncode == 0  # up to date with the run's config, whatever ran before
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "workflow", checkout / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "Snakefile", checkout / "Snakefile")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(checkout / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(TINY), "--cores", "2", "-n"]
    moved = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rules_in(moved) == set() and "Nothing to be done" in moved.stdout + moved.stderr
