"""The position-aware stage on its own targets: the tiny toy of ``tests/configs/tiny.yaml`` (narrower and trained
for fewer steps: the run is under 4 minutes, training most of it) with two operators, two methods (exact among them)
and both levels. Graphs carry the template's position labels; the faithfulness table has every method × level ×
size, anchored at the full circuit (f = 1) against the empty one (f = 0); figures decode."""

from __future__ import annotations

from pathlib import Path

import re

import matplotlib.image
import pandas as pd
import pytest
import yaml

from circuitflow.circuits.positions import PositionGraph
from circuitflow.report import cpr_label
from tests.integration.conftest import TINY, snakemake

pytestmark = pytest.mark.workflow
OPS = ["add", "sub"]
METHODS = ["EAP-IG-inputs", "exact"]
LEVELS = ["edge", "node"]
FRACTIONS = [0.01, 0.1, 0.5, 1.0]


def position_config(path: Path) -> Path:
    """``tiny.yaml`` cut to a smaller toy, two operators and a position-aware stage with two methods and both levels
    (written by the test: tests/configs holds the shared configs)."""
    config = yaml.safe_load(TINY.read_text())
    config["operators"] = OPS
    config["models"] = {"toy": config["models"]["toy"]}
    config["models"]["toy"]["recipe"].update(d_model=32, d_mlp=128, steps=150, lr=0.01, checkpoint_steps=[0])
    config["circuits"].update(methods=["EAP"], fractions=FRACTIONS)
    config["position_circuits"] = dict(enabled=True, methods=METHODS, levels=LEVELS, draw_edges=12)
    config["features"] = dict(enabled=False)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow_positions")
    targets = [f"results/figures/toy/position_circuits/{op}/{m}.png" for op in OPS for m in METHODS]
    targets += [f"results/figures/toy/position_faithfulness_{op}.png" for op in OPS]
    done = snakemake(workdir, position_config(workdir / "positions.yaml"), *targets)
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir / "results"


def test_graphs_are_labelled_by_template_position(results):
    for op in OPS:
        for method in METHODS:
            graph = PositionGraph.load(results / f"toy/position_graphs/{op}/{method}.pt")
            assert graph.positions == ["op1", "operator", "op2", "="]
            assert graph.meta["method"] == method and graph.meta["operator"] == op
            assert graph.scores[graph.valid].abs().max() > 0
            assert (results / f"toy/position_graphs/{op}/{method}.json").stat().st_size > 0


def test_faithfulness_table_has_every_level_and_size_and_its_anchors(results):
    for op in OPS:
        table = pd.read_parquet(results / f"toy/circuits/{op}/position_faithfulness.parquet")
        assert set(table[["model", "operator", "metric_name"]].itertuples(index=False, name=None)) == {
            ("toy", op, "logit_diff")}
        assert table["revision"].notna().all() and (table["n_positions"] == 4).all()
        for (method, level), rows in table.groupby(["method", "level"]):
            assert rows["fraction"].tolist() == FRACTIONS
            assert rows["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-6)  # the full circuit
            gap = rows["metric_full"] - rows["metric_empty"]
            assert (gap.abs() > 1e-6).all()
            recomputed = (rows["metric"] - rows["metric_empty"]) / gap  # 0 at the empty circuit's metric
            assert recomputed.tolist() == pytest.approx(rows["faithfulness"].tolist())
        assert {(m, lv) for m, lv in table[["method", "level"]].itertuples(index=False)} == {
            (m, lv) for m in METHODS for lv in LEVELS}
        areas = pd.read_parquet(results / f"toy/circuits/{op}/position_areas.parquet")
        assert sorted(areas[["method", "level"]].itertuples(index=False, name=None)) == sorted(
            (m, lv) for m in METHODS for lv in LEVELS)
        assert areas["cpr"].between(-1, 2).all() and (areas["operator"] == op).all()
        assert re.fullmatch(r"\d\.\d{3} \(.+\)", cpr_label(results / f"toy/circuits/{op}/position_areas.parquet"))


def test_figures_decode(results):
    pngs = [results / f"figures/toy/position_circuits/{op}/{m}.png" for op in OPS for m in METHODS]
    for png in pngs + [results / f"figures/toy/position_faithfulness_{op}.png" for op in OPS]:
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100
