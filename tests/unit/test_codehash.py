"""The code a workflow script depends on is found from its imports: transitive, relative, lazy and parent-package
imports count; modules it never reaches do not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from circuitflow.codehash import module_files, script_code_hash

ROOT = Path(__file__).resolve().parents[2]

FAKE = {
    "__init__.py": "VERSION = 1\n",
    "io.py": "import json\n",
    "tables.py": "from fakepkg.io import *\n",
    "unused.py": "X = 1\n",
    "lazy.py": "Y = 2\n",
    "stage/__init__.py": "from .core import run\n",
    "stage/core.py": "from ..tables import *\nfrom . import helpers\n\ndef later():\n    import fakepkg.lazy\n",
    "stage/helpers.py": "",
    "stage/other.py": "import fakepkg.unused\n",
    "plots/__init__.py": "",
    "plots/draw.py": "import fakepkg.io as io\n",
}


@pytest.fixture
def package(tmp_path) -> Path:
    root = tmp_path / "fakepkg"
    for name, text in FAKE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(text)
    return path


def files(found: list[Path], package: Path) -> list[str]:
    return sorted(p.relative_to(package).as_posix() for p in found)


def test_import_walk_follows_package_imports_transitively(tmp_path, package):
    found = module_files(script(tmp_path, "import pandas\nfrom fakepkg.stage import run\n"), package, "fakepkg")
    # the stage package's __init__ imports core (relative), core imports tables (relative, two levels), helpers
    # (``from . import``) and, inside a function, lazy; tables imports io; the root __init__ runs for any of them
    assert files(found, package) == ["__init__.py", "io.py", "lazy.py", "stage/__init__.py", "stage/core.py",
                                     "stage/helpers.py", "tables.py"]


def test_import_walk_reads_from_imports_of_submodules_and_plain_imports(tmp_path, package):
    found = module_files(script(tmp_path, "from fakepkg import tables\nimport fakepkg.plots.draw\n"), package,
                         "fakepkg")
    assert files(found, package) == ["__init__.py", "io.py", "plots/__init__.py", "plots/draw.py", "tables.py"]


def test_hash_changes_only_with_the_code_a_script_reaches(tmp_path, package):
    path = script(tmp_path, "from fakepkg.tables import *\n")
    before = script_code_hash(path, package, "fakepkg")
    (package / "unused.py").write_text("X = 2\n")
    (package / "stage/core.py").write_text("")
    assert script_code_hash(path, package, "fakepkg") == before
    (package / "io.py").write_text("import json  # edited\n")
    assert script_code_hash(path, package, "fakepkg") != before


def test_hash_sees_a_new_import(tmp_path, package):
    path = script(tmp_path, "import fakepkg.io\n")
    before = script_code_hash(path, package, "fakepkg")
    (package / "io.py").write_text("import fakepkg.unused\n")
    after = script_code_hash(path, package, "fakepkg")
    (package / "unused.py").write_text("X = 3\n")
    assert len({before, after, script_code_hash(path, package, "fakepkg")}) == 3


def test_every_rule_hashes_the_imports_of_its_own_script():
    """A rule's ``code=`` param names the script its ``script:`` runs (a copy-pasted name would hash other code)."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow/rules").glob("*.smk")))
    rules = re.split(r"\nrule ", text)[1:]
    checked = 0
    for body in rules:
        name = body.split(":")[0]
        ran = re.search(r'script:\s*"\.\./scripts/(\w+)\.py"', body)
        if ran is None:
            continue
        assert f'code=script_code("{ran.group(1)}")' in body, name
        checked += 1
    assert checked > 25


def test_the_attribute_script_depends_on_the_engine_not_on_plots():
    found = {p.relative_to(ROOT / "src/circuitflow").as_posix()
             for p in module_files(ROOT / "workflow/scripts/attribute.py")}
    assert {"__init__.py", "circuits/tracing.py", "circuits/job.py", "io.py", "metrics.py"} <= found
    assert "plots.py" not in found and "heuristics/analysis.py" not in found


def test_scripts_import_from_the_defining_modules():
    """``from circuitflow import attribute`` goes through the lazy top-level API (importlib), which the import walk
    cannot see: a rule would not rerun when the engine changes. Scripts import from the module that defines a name."""
    for script in sorted((ROOT / "workflow/scripts").glob("*.py")):
        text = script.read_text()
        assert not re.search(r"^\s*(from circuitflow import|import circuitflow\s*$)", text, re.MULTILINE), \
            f"{script.name}: import from circuitflow's submodules (e.g. circuitflow.circuits), not from circuitflow"
