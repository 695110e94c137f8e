"""Figures drawn from the workflow's tables (PNG and PDF, with titles and axis labels)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from circuitflow.io import atomic_path  # noqa: E402

OP_LABELS = {"add": "+", "sub": "−", "mul": "×", "div": "÷"}


def save_figure(fig, png: Path | str, pdf: Path | str | None = None) -> None:
    """Save ``fig`` atomically as PNG (and PDF) and close it."""
    for path in (png, pdf):
        if path is not None:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)


def accuracy_bars(table: pd.DataFrame):
    """Grouped bars: accuracy per operator (groups) and model (bars), from an accuracy table."""
    pivot = table.pivot(index="operator", columns="model", values="accuracy")
    pivot = pivot.reindex([op for op in OP_LABELS if op in pivot.index])
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(pivot), 3.5))
    pivot.rename(index=OP_LABELS).plot.bar(ax=ax, rot=0, width=0.8)
    ax.set(title="Accuracy on all legal prompts", xlabel="operator", ylabel="accuracy", ylim=(0, 1.05))
    ax.legend(title="model", fontsize="small")
    return fig


def accuracy_over_steps(table: pd.DataFrame, value: str = "accuracy", title: str = "Accuracy across checkpoints"):
    """One line per operator of ``value`` against training step (log-scaled, step 0 drawn at the left edge)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for op, rows in table.sort_values("step").groupby("operator", sort=False):
        ax.plot(rows["step"].clip(lower=0.5), rows[value], marker="o", ms=3, label=OP_LABELS.get(op, op))
    ax.set_xscale("log")
    ax.set(title=title, xlabel="training step (0 drawn at 0.5)", ylabel=value.replace("_", " "), ylim=(-0.02, 1.02))
    ax.legend(title="operator")
    return fig


def faithfulness_curves(curve: pd.DataFrame, title: str):
    """Faithfulness against circuit size (fraction of edges, log scale), one line per attribution method."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for method, rows in curve.groupby("method", sort=False):
        ax.plot(rows["fraction"] * 100, rows["faithfulness"], marker="o", ms=3, label=method)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set(title=title, xlabel="edges in circuit (%)", ylabel="faithfulness f(C)")
    ax.legend(title="method", fontsize="small")
    return fig


def circuit_drawing(graph, title: str):
    """The circuit of ``graph`` (its ``in_graph`` edges): nodes laid out by layer, edge width ∝ |score|, red for
    positive and blue for negative scores."""
    import numpy as np

    layout = {"input": (0.5 * (graph.n_heads - 1), 0.0)}
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            layout[f"a{layer}.h{h}"] = (float(h), 2.0 * layer + 1)
        layout[f"m{layer}"] = (0.5 * (graph.n_heads - 1), 2.0 * layer + 2)
    layout["logits"] = (0.5 * (graph.n_heads - 1), 2.0 * graph.n_layers + 1)
    ups = graph.upstream_names()
    owners = graph._down_owner()
    targets = [[(ups + ["logits"])[int(j)] for j in owners[d].nonzero()] for d in range(graph.n_down)]
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * graph.n_heads, 1.2 + 0.9 * (2 * graph.n_layers + 1)))
    edges = graph.in_graph.nonzero().tolist()
    biggest = max((abs(float(graph.scores[u, d])) for u, d in edges), default=1.0) or 1.0
    for u, d in edges:
        score = float(graph.scores[u, d])
        for target in targets[d]:
            (x0, y0), (x1, y1) = layout[ups[u]], layout[target]
            bend = 0.25 * np.sign(x1 - x0 + 1e-9) if abs(y1 - y0) > 1 else 0.0
            ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(
                arrowstyle="-", lw=0.3 + 4 * abs(score) / biggest, alpha=0.7,
                color="tab:red" if score > 0 else "tab:blue", connectionstyle=f"arc3,rad={bend}"))
    used = {ups[u] for u, _ in edges} | {t for _, d in edges for t in targets[d]}
    for name, (x, y) in layout.items():
        ax.scatter([x], [y], s=520, color="white", edgecolor="black" if name in used else "lightgrey", zorder=3)
        ax.text(x, y, name, ha="center", va="center", fontsize=6, zorder=4,
                color="black" if name in used else "lightgrey")
    ax.set(title=title, xlim=(-0.8, graph.n_heads - 0.2), ylim=(-0.8, 2 * graph.n_layers + 1.8))
    ax.axis("off")
    return fig
