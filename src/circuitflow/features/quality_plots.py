"""The dictionary-quality figure (docs/definitions.md#dictionary-quality): reconstruction and sparsity per
dictionary, and the model's accuracy per operator with each dictionary, and all of them, spliced in."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from circuitflow.plots import OP_LABELS  # noqa: E402

NMSE_TARGET = 0.05  # the bar for a usable dictionary on the default toy model


def dictionary_quality_figure(table: pd.DataFrame, title: str):
    """Three panels from a quality table: normalized MSE and explained variance per dictionary (on the training
    activations, ``operator == "all"``), L0 with the dead and dense fractions, and accuracy per operator for the
    original model, each dictionary spliced alone, and all spliced at once."""
    pooled = table[table["operator"] == "all"].sort_values(["layer", "site"])
    per_op = table[table["operator"] != "all"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    names = pooled["dictionary"].tolist()
    x = np.arange(len(names))
    ax = axes[0]
    ax.bar(x - 0.2, pooled["nmse"], 0.4, label="normalized MSE")
    ax.bar(x + 0.2, 1 - pooled["explained_variance"], 0.4, label="1 − explained variance")
    ax.axhline(NMSE_TARGET, color="k", lw=0.8, ls="--", label=f"target {NMSE_TARGET}")
    ax.set(xticks=x, xticklabels=names, ylabel="reconstruction error", title="Reconstruction (all prompts)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(x, pooled["l0"], 0.5, color="tab:green")
    ax.set(xticks=x, xticklabels=names, ylabel="L0 (active features per token)", title="Sparsity")
    for xi, row in zip(x, pooled.itertuples()):
        ax.annotate(f"dead {row.dead_fraction:.0%}\ndense {row.dense_fraction:.0%}", (xi, row.l0), ha="center",
                    va="bottom", fontsize=7)
    ax = axes[2]
    ops = list(dict.fromkeys(per_op["operator"]))
    conditions = ["none", *names, "all"]
    width = 0.8 / len(conditions)
    for j, condition in enumerate(conditions):
        rows = per_op[per_op["dictionary"] == condition].set_index("operator").reindex(ops)
        label = {"none": "original model", "all": "all spliced"}.get(condition, f"{condition} spliced")
        ax.bar(np.arange(len(ops)) + (j - (len(conditions) - 1) / 2) * width, rows["accuracy"], width, label=label)
    ax.set(xticks=np.arange(len(ops)), xticklabels=[OP_LABELS.get(op, op) for op in ops], ylim=(0, 1.05),
           ylabel="accuracy (all legal prompts)", title="Accuracy with dictionaries spliced in")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.suptitle(title)
    fig.tight_layout()
    return fig
