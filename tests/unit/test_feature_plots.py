"""Feature-circuit figures (circuitflow.features.graph_plots): the drawing of a pruned attribution graph shows one
marker per kept node and one line per kept edge, laid out by position and forward order, and the faithfulness
figure one line per graph with the Pearson r of attribution vs ablation."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
import torch
from snakemake.iocontainers import InputFiles, Log, OutputFiles, Params, Wildcards

from circuitflow.features.attribution import attribution_graph
from circuitflow.features.graph_plots import (
    EDGE_COLOURS,
    draw_attribution_graph,
    node_importance,
    node_mask_from_table,
    plot_feature_faithfulness,
)
from circuitflow.features.pruning import completeness_score, graph_influence, prune, replacement_score
from circuitflow.models import ModelHandle, load_bridge
from circuitflow.plots import save_figure
from circuitflow.toy import build_tokenizer
from tests.conftest import save_tiny_model
from tests.unit.test_feature_attribution import random_dictionaries

PROMPT = "3+14="
SCRIPTS = Path(__file__).resolve().parents[2] / "workflow/scripts"
THRESHOLDS = {"node_threshold": 0.8, "edge_threshold": 0.98}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    path = save_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2"))
    bridge = load_bridge(ModelHandle("tiny", str(path)), device="cpu", dtype="float64")
    graph = attribution_graph(bridge, build_tokenizer(20), PROMPT, random_dictionaries(2, 32, 32))
    node_mask, edge_mask = prune(graph, **THRESHOLDS)
    return graph, node_mask, edge_mask


def drawn(ax) -> tuple[dict, list]:
    """The node markers by group (``{group: [k, 2] xy}``) and the edge collection of a drawn graph."""
    nodes = {c.get_gid().split(":")[1]: np.asarray(c.get_offsets()) for c in ax.collections
             if (c.get_gid() or "").startswith("nodes:")}
    edges = [c for c in ax.collections if c.get_gid() == "edges"]
    assert len(edges) == 1
    return nodes, edges[0]


def test_one_marker_per_kept_node_and_one_line_per_kept_edge(pruned, tmp_path):
    graph, node_mask, edge_mask = pruned
    fig = draw_attribution_graph(graph, node_mask, edge_mask, title=PROMPT)
    ax = fig.axes[0]
    nodes, edges = drawn(ax)
    kinds = graph.nodes["kind"].to_numpy()
    site = graph.nodes["site"].to_numpy()
    keep = node_mask.numpy()
    assert 0 < keep.sum() < len(keep)  # pruning dropped some nodes: the count checks the mask is used
    expected = {"embedding": keep & (kinds == "embedding"), "logit": keep & (kinds == "logit"),
                "error": keep & (kinds == "error"), "mlp": keep & (kinds == "feature") & (site == "mlp"),
                "attn": keep & (kinds == "feature") & (site == "attn")}
    assert {group: len(xy) for group, xy in nodes.items()} == {g: int(m.sum()) for g, m in expected.items() if m.any()}
    kept_edges = edge_mask & node_mask[:, None] & node_mask[None, :]
    weights = graph.adjacency[kept_edges]
    assert len(edges.get_segments()) == int(kept_edges.sum()) > 0
    red = np.all(np.isclose(edges.get_colors()[:, :3], mcolors.to_rgb(EDGE_COLOURS[True])), axis=1)
    assert red.sum() == int((weights > 0).sum())
    # the widest line is the largest |weight|
    assert np.argmax(edges.get_linewidths()) == int(weights.abs().argmax())
    # embeddings on the bottom row, logits on the top row; every edge goes upward (attention before MLP within a
    # layer, every dictionary feeds only later rows) and never to an earlier position
    assert set(nodes["embedding"][:, 1]) == {0} and set(nodes["logit"][:, 1]) == {max(ax.get_yticks())}
    # nodes sharing a cell are spread: no two markers at the same place; the columns of the positions are disjoint
    # and in order, each labelled with its token
    xy = np.concatenate(list(nodes.values()))
    assert len(np.unique(xy.round(6), axis=0)) == len(xy)
    positions = np.concatenate([graph.nodes["position"].to_numpy()[m] for g, m in expected.items() if g in nodes])
    right_edge = pd.Series(xy[:, 0]).groupby(positions).max()
    left_edge = pd.Series(xy[:, 0]).groupby(positions).min()
    assert (right_edge.to_numpy()[:-1] < left_edge.to_numpy()[1:]).all()
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == [t.replace(" ", "␣") for t in graph.tokens]
    ticks = ax.get_xticks()[right_edge.index]
    assert ((left_edge <= ticks) & (ticks <= right_edge)).all()  # each cell is centred on its position's tick
    segments = np.stack(edges.get_segments())  # [edge, (source, target), (x, y)]
    assert (segments[:, 0, 1] < segments[:, 1, 1]).all()
    position_at = {tuple(point): p for point, p in zip(xy.round(9), positions)}
    ends = [[position_at[tuple(point)] for point in segment] for segment in segments.round(9)]
    assert all(source <= target for source, target in ends)
    save_figure(fig, tmp_path / "graph.png", tmp_path / "graph.pdf")
    assert (tmp_path / "graph.png").stat().st_size > 0 and (tmp_path / "graph.pdf").stat().st_size > 0


def test_node_area_follows_influence(pruned):
    graph, node_mask, edge_mask = pruned
    importance = node_importance(graph)
    logits = graph.index("logit")
    torch.testing.assert_close(importance[logits], graph.logit_probabilities.double())
    features = graph.index("feature")
    torch.testing.assert_close(importance[features], graph_influence(graph)[features].double())
    ax = draw_attribution_graph(graph, node_mask, edge_mask).axes[0]
    mlp = next(c for c in ax.collections if c.get_gid() == "nodes:mlp")
    mine = (graph.nodes["kind"] == "feature") & (graph.nodes["site"] == "mlp")
    chosen = node_mask.numpy() & mine.to_numpy()
    assert np.argmax(mlp.get_sizes()) == np.argmax(importance.numpy()[chosen])


def test_bad_masks_are_refused(pruned):
    graph, node_mask, edge_mask = pruned
    with pytest.raises(ValueError, match="node_mask must be"):
        draw_attribution_graph(graph, node_mask[:-1], edge_mask)


def test_kept_column_maps_back_to_the_graph(pruned):
    graph, node_mask, _ = pruned
    table = graph.nodes.assign(kept=node_mask.numpy(), graph=0)
    # the table may hold the nodes in any order, and leave out nodes that were not kept
    table = table.sample(frac=1.0, random_state=0).drop(index=table.index[~node_mask.numpy()][:3])
    assert torch.equal(node_mask_from_table(graph, table), node_mask)
    with pytest.raises(ValueError, match="duplicate nodes"):
        node_mask_from_table(graph, pd.concat([table, table]))
    with pytest.raises(ValueError, match="lacks column"):
        node_mask_from_table(graph, table.drop(columns="kept"))


def faithfulness_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A faithfulness curve (3 graphs) and attribution-vs-ablation rows with each graph's Pearson r."""
    rng = np.random.default_rng(0)
    prompts = ["3+14=", "7+2=", "12+30="]
    curve = pd.DataFrame([dict(graph=g, prompt=p, fraction=f, n_features=round(f * 40), faithfulness=f ** 0.5 + g,
                               metric=2.0 + f) for g, p in enumerate(prompts) for f in (0, 0.1, 0.5, 1)])
    rows = []
    for g, p in enumerate(prompts):
        attribution = rng.normal(size=6)
        ablation = attribution + rng.normal(scale=0.3, size=6)
        r = pd.Series(attribution).corr(pd.Series(ablation))
        rows += [dict(graph=g, prompt=p, attribution=a, ablation=b, pearson=r) for a, b in zip(attribution, ablation)]
    return curve, pd.DataFrame(rows)


def test_faithfulness_figure_has_one_line_per_graph(tmp_path):
    curve, ablation = faithfulness_tables()
    prompts = list(dict.fromkeys(curve["prompt"]))
    fig = plot_feature_faithfulness(curve, ablation, title="tiny, +")
    left, right = fig.axes
    lines = [line for line in left.get_lines() if (line.get_gid() or "").startswith("graph")]
    assert len(lines) == len(prompts)
    for g, line in enumerate(lines):  # each line is its graph's curve, in order of n_features
        rows = curve[curve["graph"] == g].sort_values("n_features")
        np.testing.assert_allclose(line.get_ydata(), rows["faithfulness"])
    assert {1.0, 0.0} <= {line.get_ydata()[0] for line in left.get_lines() if not line.get_gid()}
    assert len([c for c in right.collections if (c.get_gid() or "").startswith("graph")]) == len(prompts)
    pooled = pd.Series(ablation["attribution"]).corr(ablation["ablation"])
    assert f"r = {pooled:.2f}" in right.get_title()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == f"'3+14=': r = {ablation['pearson'].iloc[0]:.2f}"
    save_figure(fig, tmp_path / "faith.png")
    assert (tmp_path / "faith.png").stat().st_size > 0


def run_script(name: str, tmp_path: Path, inputs: dict, params: dict) -> Path:
    """Run a workflow script as Snakemake would; returns the PNG it wrote (its PDF is checked too)."""
    out = {"png": str(tmp_path / f"{name}.png"), "pdf": str(tmp_path / f"{name}.pdf")}
    snakemake = SimpleNamespace(input=InputFiles(fromdict=inputs), output=OutputFiles(fromdict=out),
                                params=Params(fromdict={**params, "code": "0123456789ab"}),
                                wildcards=Wildcards(fromdict={"model": "tiny", "op": "add"}),
                                log=Log([str(tmp_path / f"{name}.log")]), threads=1, config={})
    runpy.run_path(str(SCRIPTS / f"{name}.py"), init_globals={"snakemake": snakemake})
    assert Path(out["pdf"]).stat().st_size > 0
    return Path(out["png"])


def test_scripts_draw_from_the_tables(pruned, tmp_path):
    graph, node_mask, _ = pruned
    folder = tmp_path / "graphs"
    folder.mkdir()
    graph.save(folder / "graph_0.pt")
    nodes = graph.nodes.assign(graph=0, prompt=PROMPT, kept=node_mask.numpy(), influence=0.0)
    other = nodes.assign(graph=1, kept=True)  # another graph's rows are not read
    pd.concat([nodes, other]).to_parquet(tmp_path / "nodes.parquet")
    pd.DataFrame([dict(graph=0, prompt=PROMPT, replacement_score=replacement_score(graph),
                       completeness_score=completeness_score(graph))]).to_parquet(tmp_path / "scores.parquet")
    inputs = {"graphs": str(folder), "nodes": str(tmp_path / "nodes.parquet"),
              "scores": str(tmp_path / "scores.parquet")}
    assert run_script("plot_feature_graph", tmp_path, inputs, {"graph": THRESHOLDS}).stat().st_size > 0
    # a table whose kept nodes are not what the thresholds keep is refused
    pd.concat([nodes.assign(kept=True), other]).to_parquet(tmp_path / "nodes.parquet")
    with pytest.raises(SystemExit):  # the job's log gets the one-line error
        run_script("plot_feature_graph", tmp_path, inputs, {"graph": THRESHOLDS})
    assert "rerun feature_graphs" in (tmp_path / "plot_feature_graph.log").read_text()

    curve, ablation = faithfulness_tables()
    curve.to_parquet(tmp_path / "curve.parquet")
    ablation.to_parquet(tmp_path / "ablation.parquet")
    inputs = {"faithfulness": str(tmp_path / "curve.parquet"), "ablation": str(tmp_path / "ablation.parquet")}
    assert run_script("plot_feature_faithfulness", tmp_path, inputs, {}).stat().st_size > 0
