"""Drawings of position-aware circuits (:mod:`circuitflow.circuits.positions`): one column per token position."""

from __future__ import annotations

import pandas as pd

from circuitflow.circuits.positions import PositionGraph
from circuitflow.names import component_name
from circuitflow.plots import faithfulness_curves, plt  # plt: pyplot on the Agg backend, as every workflow figure


def column_layout(graph: PositionGraph) -> dict[str, tuple[float, float]]:
    """Where each node sits inside one position's column: x within ``[0, n_heads - 1]``, y = its row (the input 0,
    layer l's heads 2l + 1, its MLP 2l + 2, the logits on top)."""
    middle = 0.5 * (graph.n_heads - 1)
    layout = {"input": (middle, 0.0)}
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            layout[component_name(layer, h)] = (float(h), 2.0 * layer + 1)
        layout[component_name(layer)] = (middle, 2.0 * layer + 2)
    layout["logits"] = (middle, 2.0 * graph.n_layers + 1)
    return layout


def row_labels(graph: PositionGraph) -> list[str]:
    """The y-axis labels, bottom to top: input, then each layer's heads and MLP, then logits."""
    return ["input", *(f"L{layer} {part}" for layer in range(graph.n_layers) for part in ("heads", "MLP")), "logits"]


def position_circuit_drawing(graph: PositionGraph, title: str):
    """The circuit of ``graph`` (its ``in_graph`` pairs): one column per position headed by its label, rows = layers;
    the edge (u → v, p) runs from u to v's node inside column p (u's write at p as v reads it at p), width ∝ |score|,
    red for positive and blue for negative scores; nodes touching a circuit edge at that position in black."""
    layout, width = column_layout(graph), graph.n_heads + 1.0
    shape = graph.shape
    ups = shape.upstream_names()
    owners = shape.down_owner()
    targets = [[(ups + ["logits"])[int(j)] for j in owners[d].nonzero()] for d in range(shape.n_down)]
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * width * graph.n_pos, 1.5 + 0.8 * (2 * graph.n_layers + 1)))
    edges = graph.in_graph.nonzero().tolist()
    biggest = max((abs(float(graph.scores[u, d, p])) for u, d, p in edges), default=1.0) or 1.0
    used = set()
    for u, d, p in edges:
        score = float(graph.scores[u, d, p])
        for target in targets[d]:
            (x0, y0), (x1, y1) = layout[ups[u]], layout[target]
            ax.annotate("", (x1 + p * width, y1), (x0 + p * width, y0), arrowprops=dict(
                arrowstyle="-", lw=0.3 + 4 * abs(score) / biggest, alpha=0.7,
                color="tab:red" if score > 0 else "tab:blue", connectionstyle="arc3,rad=0.2" if y1 - y0 > 1 else None))
            used |= {(ups[u], p), (target, p)}
    for p, label in enumerate(graph.positions):
        for name, (x, y) in layout.items():
            on = (name, p) in used
            ax.scatter([x + p * width], [y], s=300, color="white", edgecolor="black" if on else "lightgrey", zorder=3)
            ax.text(x + p * width, y, name, ha="center", va="center", fontsize=5, zorder=4,
                    color="black" if on else "lightgrey")
        ax.text(p * width + 0.5 * (graph.n_heads - 1), 2 * graph.n_layers + 1.9, label, ha="center", fontsize=8,
                fontweight="bold")
        if p:
            ax.axvline(p * width - 1, color="lightgrey", lw=0.6)  # midway between two columns
    ax.set_yticks([0, *(2 * layer + r for layer in range(graph.n_layers) for r in (1, 2)), 2 * graph.n_layers + 1],
                  row_labels(graph), fontsize=7)
    ax.set(xlim=(-0.8, graph.n_pos * width - 1.2), ylim=(-0.8, 2 * graph.n_layers + 2.4), xticks=[])
    ax.set_title(title, pad=14)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    return fig


def position_faithfulness(curve: pd.DataFrame, title: str):
    """:func:`circuitflow.plots.faithfulness_curves` of a position-aware table, its sizes named as the (edge,
    position) or (node, position) pairs they count."""
    fig = faithfulness_curves(curve, title)
    for ax, level in zip(fig.axes, dict.fromkeys(curve["level"])):
        ax.set_xlabel(f"({level}, position) pairs in circuit (%)")
    return fig
