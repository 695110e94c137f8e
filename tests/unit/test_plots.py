"""Figures a reader can read: legends beside the bars, decade-only symlog ticks that never overprint, suptitles clear
of the panel titles, and every component named by one scheme (a{l}.h{h}, m{l}, m{l}.n{n})."""

from __future__ import annotations

import re
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from circuitflow import plots
from circuitflow.circuits.graph import Graph

NAME = re.compile(r"^(a\d+\.h\d+|m\d+(\.n\d+)?)$")
DECADE = re.compile(r"^(0|[-−]?10\^\{[-−]?\d+\})$")  # "0" or ±10^k as mathtext


def extents(fig, texts):
    """Window extents of the visible, non-empty ``texts`` of the drawn ``fig``."""
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text()]


def overlapping(boxes) -> list:
    return [(a, b) for a, b in combinations(boxes, 2) if a.overlaps(b)]


def plain(label) -> str:
    """A tick label's text without matplotlib's ``$\\mathdefault{...}$`` wrapper."""
    return re.sub(r"^\$\\mathdefault\{(.*)\}\$$", r"\1", label.get_text())


def shown_labels(axis) -> list:
    """The tick labels ``axis`` shows (in its view) after a draw."""
    low, high = sorted(axis.get_view_interval())
    return [label for tick, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if low <= tick <= high and label.get_text()]


def test_component_names_follow_one_scheme_and_match_the_graphs_nodes():
    assert plots.component_name(0, 3) == "a0.h3"
    assert plots.component_name(2) == "m2"
    assert plots.component_name(1, neuron=20) == "m1.n20"
    with pytest.raises(ValueError, match="head or a neuron"):
        plots.component_name(1, 2, 3)
    graph = Graph.empty(2, 3, 3, parallel=False)
    names = [plots.component_name(layer, head) for layer in range(2) for head in [*range(3), None]]
    assert ["input", *names] == graph.upstream_names()


def test_the_accuracy_legend_covers_no_bar():
    models = ["toy", "toy-addsub-lora", "pythia-1.4b"]
    table = pd.DataFrame([dict(model=m, operator=op, accuracy=1.0) for m in models for op in plots.OP_LABELS])
    fig = plots.accuracy_bars(table)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    bars = [bar.get_window_extent() for bar in ax.patches if bar.get_height() > 0]
    assert len(bars) == 12 and not any(legend.overlaps(bar) for bar in bars)
    plots.plt.close(fig)


def neuron_table(seed: int = 0) -> pd.DataFrame:
    """Neuron scores shaped like a real run's: attribution over a few decades around 0, exact IE up to 1e5 but
    never below −0.1."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(2):
        attribution = rng.choice([-1, 1], 256, p=[0.3, 0.7]) * 10.0 ** rng.uniform(-5, -0.1, 256)
        exact = np.where(attribution > 0, 10.0 ** rng.uniform(-4, 5, 256), -(10.0 ** rng.uniform(-4, -1, 256)))
        exact = exact if layer == 1 else np.full(256, np.nan)
        rows.append(pd.DataFrame(dict(layer=layer, neuron=range(256), attribution_mean=attribution,
                                      importance=np.abs(attribution) * layer, exact_ie=exact)))
    return pd.concat(rows, ignore_index=True)


def test_neuron_score_ticks_are_decades_that_do_not_overprint():
    table = neuron_table()
    fig = plots.neuron_panels(table, "toy, +: MLP neurons")
    fig.canvas.draw()
    left = fig.axes[0]
    exact = table[table["layer"] == 1]
    for axis, data in ((left.xaxis, exact["attribution_mean"]), (left.yaxis, exact["exact_ie"])):
        forward = axis.get_transform().transform
        (low, high), span = axis.get_view_interval(), forward(data.max()) - forward(data.min())
        assert forward(data.min()) - forward(low) < 0.1 * span and forward(high) - forward(data.max()) < 0.1 * span
        labels = shown_labels(axis)
        texts = [plain(label) for label in labels]
        assert len(labels) >= 3 and "0" in texts, texts
        assert all(DECADE.match(text) for text in texts), texts  # never "−2.38525×10⁻¹"
        assert not any("×" in label.get_text() for label in axis.get_minorticklabels())
        assert axis.get_offset_text().get_text() == ""
        assert not overlapping(extents(fig, labels)), texts
    assert left.get_title().startswith("m1 neurons:")
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["m0", "m1"]
    plots.plt.close(fig)


def ie_table() -> pd.DataFrame:
    """An IE map whose medians span 1e-3 to 1e10 of both signs, as in the tiny run."""
    rng = np.random.default_rng(1)
    rows = [dict(seed=0, layer=layer, component=component, head=head, position=position,
                 ie_median=float(rng.choice([-1, 1]) * 10.0 ** rng.uniform(-3, 10)))
            for layer in range(2) for component, head in [*(("head", h) for h in range(4)), ("mlp", -1)]
            for position in ("op1", "operator", "op2", "last")]
    return pd.DataFrame(rows)


def test_the_ie_colourbar_labels_do_not_overprint():
    fig = plots.ie_heatmaps(ie_table(), "toy, +: IE")
    fig.canvas.draw()
    colourbar = fig.axes[-1]
    labels = shown_labels(colourbar.yaxis)
    texts = [plain(label) for label in labels]
    assert len(labels) >= 5 and "0" in texts, texts
    assert not overlapping(extents(fig, labels)), texts
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["h0", "h1", "h2", "h3", "m"]
    plots.plt.close(fig)


def test_spaced_ticks_keep_zero_and_the_extremes_and_drop_crowded_ones():
    assert plots.spaced_ticks([-10, -1, 0, 1, 2, 10], lambda t: (t + 10) / 20, min_gap=0.2) == [-10, 0, 10]
    assert plots.spaced_ticks([0, 1, 2], lambda t: t / 2, min_gap=0.1) == [0, 1, 2]


def test_symlog_threshold_is_a_power_of_ten_below_the_bulk_of_the_values():
    assert plots.symlog_threshold([0, 0.003, 0.02, 0.5, -0.2] * 4) == pytest.approx(1e-3)
    assert plots.symlog_threshold([5.0] * 10) == pytest.approx(0.1)  # a decade beyond the largest
    assert plots.symlog_threshold([0.0, np.nan]) == 1.0


def test_component_titles_and_legends_use_the_scheme():
    grid = pd.DataFrame([dict(layer=0, head=3, target=t, op1=a, op2=b, attention=0.5)
                         for t in ("op1", "operator", "op2") for a in range(3) for b in range(3)])
    ov = pd.DataFrame([dict(layer=0, head=3, input_number=a, output_number=b, value=a - b)
                       for a in range(3) for b in range(3)])
    fig = plots.attention_panels(grid, ov, "toy, +: top heads")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        "a0.h3 → op1", "a0.h3 → operator", "a0.h3 → op2", "a0.h3 OV circuit"]
    plots.plt.close(fig)

    maps = pd.DataFrame([dict(layer=1, neuron=20, best_heuristic="both_mod_0mod3", best_score=0.9, op1=a, op2=b,
                              activation=float(a + b)) for a in range(3) for b in range(3)])
    fig = plots.heuristic_maps(maps, "toy, +: maps")
    assert fig.axes[0].get_title() == "m1.n20: both_mod_0mod3 (0.90)"
    plots.plt.close(fig)

    steps = pd.DataFrame([dict(operator="add", step=s, position="last", layer=layer, component=c, head=h,
                               ie_median=float(s * (layer + h + 2)))
                          for s in (0, 10, 100) for layer in range(2) for c, h in (("head", 0), ("head", 1),
                                                                                   ("mlp", -1))])
    fig = plots.checkpoint_ie(steps, "toy: IE across training", n_components=6)
    names = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(names) == 6 and all(NAME.match(name) for name in names) and {"m0", "m1", "a1.h1"} <= set(names)
    plots.plt.close(fig)


def test_suptitles_clear_the_panel_titles():
    table = pd.DataFrame([dict(layer=1, neuron=n, family=f, heuristic=f"{f}_{n}", matched=bool(n % 2))
                          for n in range(6) for f in ("both_mod", "result_range")])
    knockout = pd.DataFrame(dict(accuracy_random=[0.9], accuracy_associated=[0.2], accuracy_unassociated=[0.8],
                                 n_neurons=[3]))
    prompts = pd.DataFrame(dict(neurons_per_layer=[1, 2, 5], accuracy=[0.9, 0.6, 0.3], accuracy_random=[1, 1, 0.9]))
    for fig in (plots.heuristic_summary(table, knockout, prompts, "toy, +: heuristic neurons"),
                plots.neuron_panels(neuron_table(), "toy, +: MLP neurons")):
        fig.canvas.draw()
        suptitle = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
        titles = extents(fig, [ax.title for ax in fig.axes])
        assert titles and not any(suptitle.overlaps(title) for title in titles)
        plots.plt.close(fig)


def test_probe_layers_are_whole_numbers():
    table = pd.DataFrame([dict(layer=layer, position=position, accuracy=0.5) for layer in range(3)
                          for position in ("op1", "last")])
    fig = plots.probe_curves(table, "toy, +: linear probes")
    fig.canvas.draw()
    assert [plain(label) for label in shown_labels(fig.axes[0].xaxis)] == ["0", "1", "2"]
    plots.plt.close(fig)


def test_a_24_layer_legend_stands_beside_the_importance_curves():
    table = pd.DataFrame([dict(layer=layer, neuron=n, attribution_mean=0.1, importance=float(layer + 16 - n),
                               exact_ie=np.nan) for layer in range(24) for n in range(16)])
    fig = plots.neuron_panels(table, "pythia-1.4b, +: MLP neurons")
    fig.canvas.draw()
    right = fig.axes[1]
    renderer = fig.canvas.get_renderer()
    assert len(right.get_legend().get_texts()) == 24
    assert not right.get_legend().get_window_extent(renderer).overlaps(right.get_window_extent(renderer))
    plots.plt.close(fig)


METHODS = ["EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted", "exact"]


@pytest.mark.parametrize("levels", [["edge"], ["edge", "node", "neuron"], ["edge", "node", "neuron", "mlp-neuron"]])
def test_faithfulness_panels_one_per_level_under_one_legend_that_covers_nothing(levels):
    curve = pd.DataFrame([dict(level=level, method=m, fraction=f, faithfulness=f ** (0.2 + i / 10))
                          for level in levels for i, m in enumerate(METHODS) for f in (0.001, 0.01, 0.1, 1.0)])
    fig = plots.faithfulness_curves(curve, "toy: circuits for + (logit_diff)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert [ax.get_title() for ax in fig.axes] == [f"{level} level" for level in levels]
    assert [ax.get_xlabel().split()[0] for ax in fig.axes] == [plots.LEVEL_UNITS[lv].split()[0] for lv in levels]
    assert all(len(ax.get_lines()) == len(METHODS) + 2 for ax in fig.axes)  # the methods and the 0 and 1 lines
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == METHODS
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_tightbbox(renderer)) for ax in fig.axes)
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)  # not cut off
    suptitle = fig._suptitle.get_window_extent(renderer)
    assert not overlapping(extents(fig, [ax.title for ax in fig.axes]) + [suptitle])
    plots.plt.close(fig)


def scored_graph() -> Graph:
    """A 2-layer, 4-head graph with seeded edge, node and neuron (d_model 8) scores."""
    import torch

    graph = Graph.empty(2, 4, 4, parallel=False)
    generator = torch.Generator().manual_seed(0)
    graph.scores = torch.randn(graph.n_up, graph.n_down, generator=generator) * graph.valid
    graph.node_scores = graph.scores.sum(1)
    graph.neuron_scores = torch.randn(graph.n_up, 8, generator=generator)
    return graph


def drawn(fig) -> tuple[set, set, dict]:
    """What a circuit drawing shows: its edges ``(writer, reader)``, its black (circuit) nodes and every node's
    label text."""
    texts = fig.axes[0].texts
    edges = {tuple(t.get_gid().split("->")) for t in texts if t.get_gid() and "->" in t.get_gid()}
    labels = {t.get_gid(): t.get_text() for t in texts if t.get_gid() and "->" not in t.get_gid()}
    black = {t.get_gid() for t in texts if t.get_gid() in labels and t.get_color() == "black"}
    return edges, black, labels


def circuit_of(graph: Graph) -> tuple[set, set]:
    """The edges (writer, reader node) and nodes of ``graph``'s circuit, from the graph itself."""
    names = graph.upstream_names() + ["logits"]
    owners = graph.down_owner()
    edges = {(names[u], names[int(r)]) for u, d in graph.in_graph.nonzero().tolist() for r in owners[d].nonzero()}
    return edges, {names[i] for i in graph.nodes_in_graph().nonzero().flatten().tolist()}


@pytest.mark.parametrize("level, size", [("edge", 5), ("node", 4), ("neuron", 6)])
def test_a_circuit_drawing_shows_what_is_in_the_circuit_at_its_level(level, size):
    graph = scored_graph().select_topn(size, level=level)
    edges, nodes = circuit_of(graph)
    assert edges and len(nodes) < graph.n_up + 1  # a real subset: grey nodes exist
    fig = plots.circuit_drawing(graph, f"toy, +: EAP, {level} level")
    shown_edges, black, labels = drawn(fig)
    assert shown_edges == edges and black == nodes
    assert set(labels) == set(graph.upstream_names()) | {"logits"}
    kept = dict(zip(graph.upstream_names(), graph.neuron_in_graph.sum(1).tolist())) if level == "neuron" else {}
    for name, text in labels.items():  # a neuron-level node shows its kept dimensions out of d_model
        assert text == (f"{name}\n{kept[name]}/8" if name in kept else name)
    if level == "neuron":
        assert sum(kept.values()) == size and {n for n, k in kept.items() if k} | {"logits"} == nodes
    if level == "node":  # every valid outgoing edge of a chosen node is kept, and no edge of another one
        assert {w for w, _ in edges} == nodes - {"logits"}
    plots.plt.close(fig)
