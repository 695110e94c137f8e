"""The three circuit levels (edge, node, neuron) in the default workflow: the finished tiny run (the session's
``tiny_workdir``, ``circuits.levels`` at the schema's default) has a faithfulness curve and CPR/CMD areas per method
and level, each anchored at the same clean and corrupt runs, and the level figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
import yaml

from circuitflow.circuits import Graph, area_scores

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
OPS, METHODS = TINY["operators"], TINY["circuits"]["methods"]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())["properties"]["circuits"]
LEVELS, FRACTIONS = (SCHEMA["properties"][key]["default"] for key in ("levels", "fractions"))  # tiny.yaml sets neither
UNIT_SCORES = {"neuron": "neuron_scores", "mlp-neuron": "hidden_scores"}  # what a level's selection ranks
DRAWN = "EAP-IG-inputs"  # the first EAP-IG method of the tiny config: its circuit is also drawn at node and neuron level
pytestmark = pytest.mark.workflow


def expected_pairs(results: Path, op: str) -> list[tuple[str, str]]:
    """(method, level) of every curve: each method at each level whose unit scores its graph has (exact has no
    neuron scores)."""
    graphs = {m: Graph.load(results / "toy" / "graphs" / op / f"{m}.pt") for m in METHODS}
    return [(m, level) for m in METHODS for level in LEVELS
            if getattr(graphs[m], UNIT_SCORES.get(level, "scores")) is not None]


@pytest.mark.parametrize("op", OPS)
def test_every_method_and_level_has_a_curve_from_the_same_anchors(tiny_workdir, op):
    results = tiny_workdir / "results"
    curve = pd.read_parquet(results / "toy" / "circuits" / op / "faithfulness.parquet")
    pairs = expected_pairs(results, op)
    assert ("exact", "edge") in pairs and (DRAWN, "neuron") in pairs
    assert list(curve[["method", "level"]].drop_duplicates().itertuples(index=False, name=None)) == pairs
    assert curve.groupby(["method", "level"]).size().eq(len(FRACTIONS)).all()
    assert set(curve["selection"]) == {"topn"}
    # one clean (full) and one corrupt (empty) run anchor every curve of every method and level
    full, empty = curve["metric_full"].iloc[0], curve["metric_empty"].iloc[0]
    assert curve["metric_full"].tolist() == pytest.approx([full] * len(curve), rel=1e-6)
    assert curve["metric_empty"].tolist() == pytest.approx([empty] * len(curve), rel=1e-6)
    assert full != pytest.approx(empty)
    # each curve's own anchors (the same runs up to float rounding: faithfulness near 0 differs by ~1e-8 otherwise)
    own = (curve["metric"] - curve["metric_empty"]) / (curve["metric_full"] - curve["metric_empty"])
    assert curve["faithfulness"].tolist() == pytest.approx(own.tolist(), rel=1e-9, abs=1e-12)
    whole = curve[curve["fraction"] == 1.0]
    assert len(whole) == len(pairs)
    assert whole["faithfulness"].tolist() == pytest.approx([1.0] * len(pairs), abs=1e-6)
    neurons = curve[curve["level"] == "neuron"]  # sizes count the level's units: kept output dimensions grow
    assert neurons.groupby("method")["n_neurons"].apply(lambda n: n.is_monotonic_increasing).all()


@pytest.mark.parametrize("op", OPS)
def test_areas_are_per_method_and_level_and_match_their_curves(tiny_workdir, op):
    results = tiny_workdir / "results"
    curve = pd.read_parquet(results / "toy" / "circuits" / op / "faithfulness.parquet")
    areas = pd.read_parquet(results / "toy" / "circuits" / op / "areas.parquet")
    assert list(areas[["method", "level"]].itertuples(index=False, name=None)) == expected_pairs(results, op)
    for row in areas.itertuples():
        own = curve[(curve["method"] == row.method) & (curve["level"] == row.level)]
        assert (row.cpr, row.cmd) == pytest.approx(tuple(area_scores(own).values()))
        assert 0 <= row.cpr <= 1 and row.selection == "topn"


def test_the_level_figures_exist_and_decode(tiny_workdir):
    figures = tiny_workdir / "results" / "figures" / "toy"
    for op in OPS:
        pngs = [figures / f"faithfulness_{op}.png", *(figures / "circuits" / op / f"{DRAWN}_{level}.png"
                                                       for level in ("node", "neuron"))]
        for png in pngs:
            image = matplotlib.image.imread(png)
            assert image.ndim == 3 and min(image.shape[:2]) > 200 and image.std() > 0, png
    assert not list((figures / "circuits").rglob("exact_*.png"))  # one method's circuit is drawn at every level


def test_the_cpr_table_has_a_row_per_operator_and_level(tiny_workdir):
    page = (tiny_workdir / "results" / "tables" / "circuit_cpr.html").read_text()
    assert "<th>level</th>" in page and all(f"<th>{m}</th>" in page for m in METHODS)
    assert [page.count(f"<th>{level}</th>") for level in LEVELS] == [len(OPS)] * len(LEVELS)
    missing = sum(len(METHODS) * len(LEVELS) - len(expected_pairs(tiny_workdir / "results", op)) for op in OPS)
    assert missing and page.count("<td>—</td>") == missing  # exact has no neuron-level curve
