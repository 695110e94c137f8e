"""Workflow hygiene: the Snakefile and rules are `snakefmt`-clean at the project's line length, and `snakemake
--lint` reports nothing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAKEFILES = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]


def test_snakefmt_clean():
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent))
    if snakefmt is None:
        pytest.skip("snakefmt is not installed (it is in the test extra: make install)")
    done = subprocess.run([snakefmt, "--check", "--line-length", "120", *map(str, SNAKEFILES)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"run `snakefmt -l 120 Snakefile workflow/rules`:\n{done.stderr[-3000:]}"


def test_lint_clean():
    done = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--cores", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    lints = re.findall(r"^\s+\* (.+?):?$", done.stdout + done.stderr, flags=re.M)
    assert done.returncode == 0 and not lints, f"snakemake --lint: {sorted(set(lints))}\n{done.stderr[-2000:]}"
