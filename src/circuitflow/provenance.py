"""Where an output came from: model, revision, the config keys of the job, the code, git commit, package versions.

A workflow job registers its record once (:func:`circuitflow.snakejob.snakemake_job` does);
:func:`circuitflow.io.write_parquet` then stores it as the parquet key-value metadata ``circuitflow.provenance``
(JSON) of every table the job writes, and the circuit jobs put it in ``Graph.meta["provenance"]``. The record holds
no timestamps or paths of the machine, so two identical runs write identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PROVENANCE_KEY = "circuitflow.provenance"
PACKAGES = ("circuitflow", "torch", "transformers", "transformer-lens", "peft", "numpy", "pandas", "pyarrow",
            "snakemake")
SOURCE_DIR = Path(__file__).resolve().parent

_current: dict | None = None


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when it is not installed), and Python's."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: Path = SOURCE_DIR) -> dict[str, object]:
    """``commit`` of the git checkout holding ``path`` and whether tracked files differ from it (``dirty``); both
    None outside a checkout (an installed wheel)."""
    def git(*args: str) -> str | None:
        try:
            run = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return run.stdout.strip() if run.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def config_hash(config: dict) -> str:
    """A 12-hex-digit hash of a JSON-able config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def provenance_record(*, model: str | None, revision: str | None, config: dict, code: str | None) -> dict:
    """The provenance of one job: ``model``, ``revision``, the ``config`` keys it reads and their ``config_hash``,
    the ``code`` hash of the library modules it runs, ``git`` (commit, dirty) and ``packages`` (versions)."""
    return dict(model=model, revision=revision, config=config, config_hash=config_hash(config), code=code,
                git=git_state(), packages=package_versions())


def register(record: dict | None) -> None:
    """Make ``record`` the current job's provenance (None: no job), written with every table from now on."""
    global _current
    _current = record


def current() -> dict | None:
    """The registered provenance record, or None outside a workflow job."""
    return _current


def encode(record: dict) -> bytes:
    """A record as the canonical JSON stored in parquet metadata."""
    return json.dumps(record, sort_keys=True, default=str).encode()


def read_provenance(path: Path | str) -> dict | None:
    """The provenance record stored in a parquet file's metadata, or None if it has none."""
    import pyarrow.parquet as pq

    stored = (pq.read_schema(path).metadata or {}).get(PROVENANCE_KEY.encode())
    return None if stored is None else json.loads(stored)
