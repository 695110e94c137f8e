"""The library as researchers use it: the top-level API imports lazily and completely, and every definition the
code cites is a section of docs/definitions.md."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import circuitflow

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "docs" / "definitions.md"
CITED_DIRS = ("src/circuitflow", "workflow", "tests", "benchmarks")


def test_import_circuitflow_does_not_import_torch():
    code = "import sys, json, circuitflow; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('torch', 'transformers', 'transformer_lens', 'pandas'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


def test_every_public_name_imports_from_the_module_that_defines_it():
    for name, module in circuitflow.EXPORTS.items():
        assert getattr(circuitflow, name) is getattr(importlib.import_module(module), name), name
    namespace: dict = {}
    exec("from circuitflow import *", namespace)
    assert set(circuitflow.__all__) <= set(namespace)
    assert set(circuitflow.__all__) <= set(dir(circuitflow))


def test_the_names_the_readme_promises_are_public():
    promised = {"read_handle", "load_bridge", "load_tokenizer", "Tracer", "attribute", "evaluate_graph",
                "faithfulness_curve", "area_scores", "Graph", "pair_batches", "to_eap_json", "from_eap_json",
                "logit_diff", "ie_map", "neuron_table", "paper_faithfulness", "analyse_heuristics"}
    assert promised <= set(circuitflow.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'atribute'"):
        circuitflow.atribute  # noqa: B018


def github_anchor(heading: str) -> str:
    """The id GitHub gives a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def cited_files() -> list[Path]:
    return [path for folder in CITED_DIRS for path in sorted((ROOT / folder).rglob("*"))
            if path.suffix in (".py", ".smk", ".yaml", ".md") and path.is_file()]


def test_every_cited_definition_is_a_section_of_docs_definitions():
    headings = re.findall(r"^#+ (.+)$", DEFINITIONS.read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(h) for h in headings}
    cited = {(path.relative_to(ROOT).as_posix(), anchor) for path in cited_files()
             for anchor in re.findall(r"docs/definitions\.md#([\w\-]+)", path.read_text())}
    cited |= {("docs/definitions.md", a) for a in re.findall(r"\]\(#([\w\-]+)\)", DEFINITIONS.read_text())}
    assert len(cited) > 5
    assert [c for c in cited if c[1] not in anchors] == []


def test_no_code_cites_the_design_document_outside_the_repository():
    outside = "/".join(("shared", "design"))  # spelled apart so this file does not cite it
    assert [str(p.relative_to(ROOT)) for p in cited_files() if outside in p.read_text()] == []
