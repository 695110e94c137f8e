"""circuitflow: find and explain the circuits language models use for arithmetic.

The library behind the Snakemake workflow; every stage is usable from a notebook::

    from circuitflow.models import read_handle, load_bridge
    bridge = load_bridge(read_handle("results/models/toy/model.json"), device="cpu")
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent


def code_version(*modules: str) -> str:
    """A short hash of the sources of the named library modules (``"toy"``, ``"models"``, ...).

    Workflow rules carry it in ``params:`` so that Snakemake reruns a job when the code it runs changes
    (Snakemake does not track modules imported by scripts). A package name hashes all its files.
    """
    digest = hashlib.sha256(__version__.encode())
    for name in sorted(modules):
        target = PACKAGE_DIR / name.replace(".", "/")
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
        if not files or not files[0].exists():
            raise ValueError(f"code_version: no module circuitflow.{name}")
        for file in files:
            digest.update(file.relative_to(PACKAGE_DIR).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]
