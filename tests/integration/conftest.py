"""The finished tiny run (``tests/configs/tiny.yaml``, GPT-NeoX toy, two operators) that several integration tests
read: built once per test session, in a temporary folder. Tests must not change its outputs (dry runs, copies; a
test that reruns jobs works on a :func:`copy_run` of it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/configs/tiny.yaml"


def snakemake(workdir: Path, configfile: Path, *args: str, cores: int = 2) -> subprocess.CompletedProcess:
    """Run the workflow in ``workdir`` with ``configfile``; stdout and stderr captured."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", str(cores), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=2400)


def copy_run(workdir: Path, to: Path) -> Path:
    """Copy a finished run's working folder to ``to`` as a user would (symlinks kept, mtimes kept, so Snakemake finds
    it up to date); returns ``to``."""
    shutil.copytree(workdir, to, symlinks=True, copy_function=shutil.copy2)
    return to


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory) -> Path:
    """The working folder of a finished run of ``tests/configs/tiny.yaml`` (results in ``results/``)."""
    workdir = tmp_path_factory.mktemp("workflow_tiny")
    done = snakemake(workdir, TINY)
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir
