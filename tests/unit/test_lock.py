"""The lock file (requirements.lock.txt) against pyproject.toml and the installed environment.

`make install` installs with ``-c requirements.lock.txt``; `make lock` regenerates it. These tests fail when the lock
no longer satisfies pyproject's ranges, misses a dependency, or when the environment running the tests differs from
it (CI must test exactly the locked versions).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, list[tuple[Version, str]]]:
    """name -> [(version, environment marker)] of every ``name==version`` line."""
    pins: dict[str, list[tuple[Version, str]]] = {}
    for line in (ROOT / "requirements.lock.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.*))?$", line)
        if match:
            pins.setdefault(canonical(match[1]), []).append((Version(match[2]), match[3] or ""))
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = lock_pins()
    for req in declared():
        assert canonical(req.name) in pins, f"{req.name} is missing from requirements.lock.txt: run `make lock`"
        for version, _ in pins[canonical(req.name)]:
            assert version in req.specifier, f"lock pins {req.name}=={version}, outside pyproject's {req.specifier}"


def test_every_declared_dependency_has_an_upper_bound():
    for req in declared():
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req} has no upper bound"


def test_torch_pin_agrees_with_requirements_torch():
    torch_line = (ROOT / "requirements-torch.txt").read_text().split()[0]
    assert [str(v) for v, _ in lock_pins()["torch"]] == [torch_line.split("==")[1]]


@pytest.mark.parametrize("name", ["torch", "transformers", "transformer-lens", "peft", "snakemake", "pandas",
                                  "numpy", "huggingface-hub", "tokenizers", "safetensors", "pyarrow"])
def test_the_environment_runs_the_locked_versions(name):
    import platform

    installed = Version(Version(metadata.version(name)).base_version)
    python = Version(platform.python_version())
    locked = [v for v, marker in lock_pins()[canonical(name)]
              if not marker or eval_marker(marker, python)]
    assert installed in locked, (f"{name} {installed} is installed but requirements.lock.txt pins {locked}: "
                                 "reinstall with `make install` (or `pip install -c requirements.lock.txt -e .`)")


def eval_marker(marker: str, python: Version) -> bool:
    from packaging.markers import Marker

    return Marker(marker).evaluate({"python_full_version": str(python), "python_version": f"{python.major}.{python.minor}"})
