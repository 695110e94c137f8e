"""The report's own items: headline tables and provenance pages; captions name the figure's model and operator and
link only to items the report has."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pandas as pd
import pytest

from circuitflow.io import write_parquet
from circuitflow.provenance import provenance_record
from circuitflow.report import (cpr_label, device_description, provenance_frame, provenance_page, summary_tables,
                               table_page)

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = ROOT / "workflow" / "report"


def _accuracy(folder: Path, model: str, values: dict[str, float], provenance: dict | None = None) -> str:
    path = folder / model / "accuracy.parquet"
    path.parent.mkdir(parents=True)
    frame = pd.DataFrame({"model": model, "operator": list(values), "accuracy": list(values.values())})
    write_parquet(frame, path, provenance=provenance)
    return str(path)


def test_accuracy_table_pivots_models_by_operator_and_empty_stages_are_none(tmp_path):
    paths = [_accuracy(tmp_path, "toy", {"add": 0.99, "sub": 0.5}), _accuracy(tmp_path, "big", {"add": 0.25,
                                                                                                "sub": 1.0})]
    tables = summary_tables(paths, [], [], [], [])
    assert tables["accuracy"].loc["toy", "sub"] == 0.5 and tables["accuracy"].loc["big", "add"] == 0.25
    assert tables["areas"] is None and tables["paper_circuits"] is None and tables["heuristics"] is None
    page = table_page("Accuracy", tables["accuracy"])
    assert "<table" in page and "0.990" in page and "0.250" in page
    assert "No model ran this stage" in table_page("CPR", None) and "<table" not in table_page("CPR", None)


def test_provenance_page_shows_commit_versions_device_and_config(tmp_path):
    record = provenance_record(model="toy", revision="step300", config={"k": 5}, code="abc123")
    record["git"] = {"commit": "0123456789abcdef", "dirty": False}
    path = _accuracy(tmp_path, "toy", {"add": 1.0}, provenance=record)
    frame = provenance_frame([path])
    assert frame.loc["toy", "commit"] == "0123456789abcdef" and frame.loc["toy", "revision"] == "step300"
    assert frame.loc["toy", "code"] == "abc123" and frame.loc["toy", "pandas"] == pd.__version__
    device = device_description("cpu")
    assert device.startswith("cpu → cpu (")
    page = provenance_page([path], {"seed": 7}, device)
    assert "0123456789abcdef" in page and pd.__version__ in page and "<code>cpu → cpu (" in page
    assert "seed: 7" in page


def test_a_table_without_provenance_is_named(tmp_path):
    path = tmp_path / "toy" / "accuracy.parquet"
    path.parent.mkdir()
    pd.DataFrame({"model": ["toy"]}).to_parquet(path)
    with pytest.raises(ValueError, match=f"report: {re.escape(str(path))} has no provenance metadata"):
        provenance_frame([str(path)])


def _report_markup() -> list[tuple[str, str]]:
    """(caption file name, the report(...) call's text) of every figure or table marked for the report."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    calls = []
    for start in (m.end() for m in re.finditer(r"\breport\((?!\.\.\.\))", text)):
        depth, end = 1, start
        while depth:  # to the matching parenthesis (captions and categories hold parentheses of their own)
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        call = text[start:end - 1]
        calls.append((re.search(r'caption="\.\./report/(\w+\.rst)"', call).group(1), call))
    return calls


def test_every_report_item_has_a_caption_a_category_and_labels():
    markup = _report_markup()
    assert len(markup) >= 19
    for caption, call in markup:
        assert (CAPTIONS / caption).exists(), caption
        assert re.search(r'category="\d \w', call) and "labels=" in call, call
    used = {caption for caption, _ in markup} | {"workflow.rst"}
    assert used == {p.name for p in CAPTIONS.glob("*.rst")}  # no caption file is left over


def test_captions_name_model_and_operator_and_link_only_to_report_items():
    render = jinja2.Environment().from_string
    calls = "".join(call for _, call in _report_markup())
    targets = set(re.findall(r'/([\w-]+\.(?:html|png))"', calls)) | set(re.findall(r'category="([^"]+)"', calls))
    wildcards = SimpleNamespace(model="toy-model", op="mul-op")
    for path in CAPTIONS.glob("*.rst"):
        text = render(path.read_text()).render(snakemake=SimpleNamespace(wildcards=wildcards, config={
            "models": {"toy": {}}, "operators": ["add"], "device": "cpu"}))
        source = path.read_text()
        if "wildcards.model" in source:
            assert text.startswith("**toy-model**"), path.name
        if "wildcards.op" in source:
            assert "**mul-op**" in text, path.name
        for target in re.findall(r"`([^`]+)`_", text):
            assert target in targets, (path.name, target)


def _areas(folder: Path, model: str, op: str, rows: list[tuple[str, str, float]]) -> str:
    """An areas.parquet of (method, level, cpr) rows where the workflow writes it."""
    path = folder / model / "circuits" / op / "areas.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows, columns=["method", "level", "cpr"]).to_parquet(path)
    return str(path)


def test_cpr_label_is_the_methods_cpr_or_the_best_one_at_the_figures_level(tmp_path):
    areas = _areas(tmp_path, "toy", "add", [("EAP", "edge", 0.5), ("EAP-IG-inputs", "edge", 0.8761),
                                            ("exact", "edge", 0.7), ("EAP", "node", 0.95), ("exact", "node", 0.2),
                                            ("EAP-IG-inputs", "neuron", 0.31)])
    assert cpr_label(areas, "exact") == "0.700" and cpr_label(areas, "exact", "node") == "0.200"
    assert cpr_label(areas) == "0.876 (EAP-IG-inputs)" and cpr_label(areas, level="node") == "0.950 (EAP)"
    assert cpr_label(areas, "EAP-IG-inputs", "neuron") == "0.310"
    assert cpr_label(areas, "exact", "neuron") == "—"  # exact scores no neurons: no neuron-level curve


def test_the_cpr_table_has_a_row_per_model_operator_and_level(tmp_path):
    add = [(m, level, cpr) for m, cpr in (("EAP", 0.1), ("exact", 0.2)) for level in ("edge", "node", "neuron")]
    paths = [_areas(tmp_path, "toy", "add", add[:-1]),  # exact has no neuron level
             _areas(tmp_path, "toy", "sub", [("EAP", "edge", 0.3), ("exact", "edge", 0.4), ("EAP", "node", 0.5),
                                             ("exact", "node", 0.6)])]
    table = summary_tables([], paths, [], [], [])["areas"]
    assert table.index.names == ["model", "operator", "level"] and list(table.columns) == ["EAP", "exact"]
    assert list(table.index) == [("toy", "add", "edge"), ("toy", "add", "node"), ("toy", "add", "neuron"),
                                 ("toy", "sub", "edge"), ("toy", "sub", "node")]  # the config's order
    assert table.loc[("toy", "sub", "node"), "exact"] == 0.6 and table.loc[("toy", "add", "neuron"), "EAP"] == 0.1
    assert pd.isna(table.loc[("toy", "add", "neuron"), "exact"])
    page = table_page("CPR", table)
    assert "neuron" in page and "0.600" in page and "—" in page and "NaN" not in page
