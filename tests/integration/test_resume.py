"""An interrupted run resumes with the documented command: SIGKILL the whole process group of a tiny run in the
middle of a resumable sweep, run `make run`'s two steps again (release a stale lock, snakemake with the default
profile) and get every table, graph, checkpoint and PDF an uninterrupted run of the same config writes, and no
`.partial`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pandas as pd
import pytest

from circuitflow.io import release_stale_lock
from tests.integration.test_reruns import ROOT, snakemake, write_config

pytestmark = pytest.mark.workflow

# The default profile, and a part of the DAG (8 jobs: training, prompts, a graph, both kinds of sweeps, a multi-output
# job, a PDF) that keeps the test at about a minute per run on two cores.
PROFILE = ("--workflow-profile", str(ROOT / "workflow/profiles/default"),
           "results/toy/checkpoint_ie_maps.parquet", "results/toy/ie_maps/add.parquet",
           "results/toy/graphs/add/EAP.pt", "results/toy/attention/add.parquet", "results/figures/toy/training.pdf")
# One method, one localization seed, a 100-step toy with checkpoints 0, 50, 100: a checkpoint sweep of three units.
CHANGES = dict(circuits__methods=["EAP"], models__toy__recipe__steps=100,
               models__toy__recipe__checkpoint_steps=[0, 50])


def resume(workdir: Path, config: Path) -> subprocess.CompletedProcess:
    """What `make run` does, on ``workdir``: release a lock left by a killed run, then snakemake with the profile."""
    release_stale_lock(workdir)
    return snakemake(workdir, config, *PROFILE)


def kill_mid_sweep(workdir: Path, config: Path) -> None:
    """Start the run in its own process group and SIGKILL the group once a sweep has finished a unit (and so is
    still computing the next one)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", *PROFILE]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        while not any((workdir / "results").glob("*/.partial/*/*/*.sha256")):
            assert run.poll() is None, f"the run ended (rc {run.returncode}) before any sweep unit was written"
            assert time.monotonic() < deadline, "no sweep unit after 15 minutes"
            time.sleep(0.05)
    finally:
        with suppress(ProcessLookupError):  # the whole group: snakemake and the jobs it runs
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()


def outputs(workdir: Path, pattern: str) -> dict[Path, Path]:
    """The files matching ``pattern`` under ``workdir/results``, by their path relative to it."""
    return {p.relative_to(workdir): p for p in (workdir / "results").rglob(pattern)}


def test_a_killed_run_resumes_with_the_documented_command_and_matches_an_uninterrupted_one(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    run = snakemake(whole, write_config(whole, "tiny", **CHANGES), *PROFILE)
    assert run.returncode == 0, run.stderr[-3000:]

    config = write_config(killed, "tiny", **CHANGES)
    kill_mid_sweep(killed, config)
    assert any((killed / ".snakemake/locks").glob("*.lock"))  # what used to need --unlock
    assert not (killed / "results/toy/checkpoint_ie_maps.parquet").exists()
    run = resume(killed, config)
    assert run.returncode == 0, run.stderr[-3000:]
    again = snakemake(killed, config, *PROFILE, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr

    tables, graphs, weights, pdfs = (outputs(whole, p) for p in ("*.parquet", "*.pt", "*.safetensors", "*.pdf"))
    assert len(tables) >= 8 and graphs and len(weights) == 3 and pdfs
    assert outputs(killed, "*.parquet").keys() == tables.keys()
    for name, path in tables.items():
        expected, got = pd.read_parquet(path), pd.read_parquet(killed / name)
        pd.testing.assert_frame_equal(got, expected, check_exact=True, obj=str(name))
        assert got.attrs == expected.attrs, name
    for pattern, files in (("*.pt", graphs), ("*.safetensors", weights), ("*.pdf", pdfs)):  # the same bytes
        assert outputs(killed, pattern).keys() == files.keys()
        for name, path in files.items():
            assert (killed / name).read_bytes() == path.read_bytes(), name
    assert not [p for p in (killed / "results").rglob("*") if ".partial" in p.parts]
