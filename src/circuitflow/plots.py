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
