"""The library code a workflow script runs, found from its imports, and a hash of it for the rules' ``params``.

Snakemake reruns a job when its script changes but not when a module the script imports does. Each rule therefore
carries ``code=script_code_hash(script)``: a hash of every ``circuitflow`` source file the script imports, directly
or through other ``circuitflow`` modules (static: every ``import`` statement in the file, including those inside
functions; parent packages' ``__init__.py`` files count, as importing a submodule runs them). Editing a module
reruns exactly the jobs whose scripts reach it.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "circuitflow"
PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(name: str, package_dir: Path) -> Path | None:
    """The source file of the dotted module ``name`` (``circuitflow.a.b``) under ``package_dir``, if it exists."""
    parts = name.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py") if parts else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _module_name(file: Path, package_dir: Path, package: str) -> str:
    """The dotted name of a source file of the package (``circuitflow/a/__init__.py`` -> ``circuitflow.a``)."""
    parts = list(file.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


@lru_cache(maxsize=None)
def imported_modules(source: str, package: str, current: str | None = None, is_package: bool = False) -> frozenset[str]:
    """Dotted names of the ``package`` modules that ``source`` may import, each with its ``from`` targets as
    candidate submodules (``from circuitflow.a import b`` gives ``circuitflow.a`` and ``circuitflow.a.b``).
    ``current`` is the module's own name, for relative imports (``is_package``: it is an ``__init__.py``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if current is None:
                    continue
                anchor = current.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(name for name in found if name == package or name.startswith(f"{package}."))


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _direct_imports(file: Path, package_dir: Path, package: str) -> frozenset[Path]:
    """Source files of the package modules ``file`` imports directly (each with its parent packages); remembered per
    file version (path, modification time, size): a workflow parse hashes ~40 scripts sharing most modules."""
    stat = file.stat()
    return _direct_imports_of(file, stat.st_mtime_ns, stat.st_size, package_dir, package)


@lru_cache(maxsize=None)
def _direct_imports_of(file: Path, mtime_ns: int, size: int, package_dir: Path, package: str) -> frozenset[Path]:
    current, is_package = None, False
    if file.is_relative_to(package_dir):
        current, is_package = _module_name(file, package_dir, package), file.name == "__init__.py"
    files = set()
    for name in imported_modules(file.read_text(), package, current, is_package):
        for parent in _with_parents(name):
            module = _module_file(parent, package_dir)
            if module is not None:
                files.add(module)
    return frozenset(files)


def module_files(script: Path | str, package_dir: Path = PACKAGE_DIR, package: str = PACKAGE) -> list[Path]:
    """Every source file of ``package`` (at ``package_dir``) that ``script`` imports, transitively, sorted."""
    seen: set[Path] = set()
    todo = [Path(script).resolve()]
    while todo:
        for module in _direct_imports(todo.pop(), package_dir.resolve(), package):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    return sorted(seen)


def script_code_hash(script: Path | str, package_dir: Path = PACKAGE_DIR, package: str = PACKAGE) -> str:
    """A 12-hex-digit hash of the package sources ``script`` imports (their paths and bytes)."""
    digest = hashlib.sha256()
    for file in module_files(script, package_dir, package):
        digest.update(file.relative_to(package_dir.resolve()).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
