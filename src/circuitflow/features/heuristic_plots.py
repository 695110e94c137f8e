"""Figures of heuristics as features against heuristic neurons (docs/definitions.md#heuristics-as-features), drawn
from the tables of :func:`circuitflow.features.heuristic_features.analyse_features`.

The summary puts the three comparisons side by side: (a) the share of important features (per dictionary site) and
of classified neurons that implement a heuristic (a match above the unit's permutation null); (b) into how many
features each heuristic neuron splits, by both measures of ``neuron_splits`` (important features sharing one of its
heuristics; features whose decoder row has cosine ≥ 0.5 with its W_out row); (c) per heuristic shared by features
and neurons, the knockout specificity (accuracy drop on its prompts minus the drop on other prompts) of knocking out
its features against zero-ablating its neurons — above the diagonal, the features are the more specific units. The
maps show each top feature's activation over the operand grid, as :func:`circuitflow.plots.heuristic_maps` does for
neurons.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SITE_UNITS = {"mlp": "transcoder features", "attn": "attention SAE features"}
SPLIT_MEASURES = {"n_features_same_heuristic": "important features sharing one of its heuristics",
                  "n_features_cosine": "features whose decoder row has cosine ≥ 0.5 with its W_out row"}
MAX_NAMED = 12  # heuristics named next to their knockout point at most


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.6, text, ha="center", va="center", transform=ax.transAxes, fontsize="small", color="grey",
            bbox=dict(facecolor="white", edgecolor="none"))


def _shares(ax, comparison: pd.DataFrame) -> None:
    """(a) bars: share of each site's important features and of the classified neurons implementing a heuristic."""
    names = [SITE_UNITS.get(site, f"{site} features") for site in comparison["site"]]
    counts = list(zip(comparison["n_heuristic_features"], comparison["n_features"]))
    shares = comparison["share_features"].tolist()
    if len(comparison):
        names.append("MLP neurons")
        counts.append((comparison["n_heuristic_neurons"].iloc[0], comparison["n_neurons"].iloc[0]))
        shares.append(comparison["share_neurons"].iloc[0])
        bars = ax.bar(names, np.nan_to_num(np.asarray(shares, dtype=float)), color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, labels=[f"{int(k)} of {int(n)}" for k, n in counts], fontsize="small")
        ax.tick_params(axis="x", labelsize="small")
    else:
        _empty(ax, "no comparison")
    ax.set(title="units implementing a heuristic", ylabel="share of the classified units", ylim=(0, 1.1))


def _splits(ax, splits: pd.DataFrame) -> None:
    """(b) histograms over heuristic neurons of the features each splits into, one per measure."""
    drawn = False
    for i, (column, label) in enumerate(SPLIT_MEASURES.items()):
        values = splits[column].dropna().to_numpy(dtype=float) if column in splits else np.zeros(0)
        if len(values):
            ax.hist(values, bins=np.arange(values.max() + 2) - 0.5, histtype="step", lw=1.5, color=f"C{i}",
                    label=label)
            drawn = True
    if drawn:
        ax.set_ylim(0, 1.3 * ax.get_ylim()[1])  # room for the legend above the bars
        ax.legend(fontsize="x-small", loc="upper right")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
    else:
        _empty(ax, "no heuristic neuron with a transcoder")
    ax.set(title="features per heuristic neuron", xlabel="features of the neuron's layer's transcoder",
           ylabel="heuristic neurons")


def _knockout(ax, knockout: pd.DataFrame) -> None:
    """(c) per shared heuristic: knockout specificity of its features against its neurons."""
    ax.plot([-1, 1], [-1, 1], color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    if len(knockout):
        ax.scatter(knockout["specificity_neurons"], knockout["specificity_features"], s=10 + 2 * knockout["n_features"],
                   alpha=0.7)
        if len(knockout) <= MAX_NAMED:
            for row in knockout.itertuples(index=False):
                ax.annotate(row.heuristic, (row.specificity_neurons, row.specificity_features), fontsize="xx-small",
                            xytext=(3, 3), textcoords="offset points")
    else:
        _empty(ax, "no heuristic shared by enough features and neurons")
    ax.set(title="knockout specificity per heuristic", xlabel="neurons zero-ablated: drop on its prompts − on others",
           ylabel="features knocked out: drop on its prompts − on others", xlim=(-1.05, 1.05), ylim=(-1.05, 1.05))


def feature_heuristic_summary(comparison: pd.DataFrame, splits: pd.DataFrame, knockout: pd.DataFrame, title: str):
    """Three panels: (a) share of important features vs neurons implementing a heuristic (``comparison``), (b)
    histogram of features per heuristic neuron, both measures (``splits``), (c) knockout specificity, features
    against neurons, one point per heuristic (``knockout``; size grows with its features)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    _shares(axes[0], comparison)
    _splits(axes[1], splits)
    _knockout(axes[2], knockout)
    fig.suptitle(title)
    return fig


def operand_grid(op1: np.ndarray, op2: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``[shape]`` (op1 rows, op2 columns): ``values`` at their operand pairs, NaN at pairs not given."""
    grid = np.full(shape, np.nan)
    grid[np.asarray(op1, dtype=np.int64), np.asarray(op2, dtype=np.int64)] = values
    return grid


def feature_maps(maps: pd.DataFrame, title: str):
    """Each mapped feature's last-position activation over the operand grid (op1 rows, op2 columns; blank = illegal
    pair), titled ``{dictionary}.f{feature}`` with its best heuristic and match score."""
    features = maps.drop_duplicates(["dictionary", "feature"])
    n = max(len(features), 1)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(features):]:
        ax.set_axis_off()
    if features.empty:
        _empty(axes.flat[0], "no feature to map")
    else:
        shape = (int(maps["op1"].max()) + 1, int(maps["op2"].max()) + 1)
    for ax, feature in zip(axes.flat, features.itertuples(index=False)):
        here = maps[(maps["dictionary"] == feature.dictionary) & (maps["feature"] == feature.feature)]
        image = ax.imshow(operand_grid(here["op1"], here["op2"], here["activation"].to_numpy(dtype=float), shape),
                          origin="lower", cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, fraction=0.046, label="activation")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=f"{feature.dictionary}.f{feature.feature}: {feature.best_heuristic} ({feature.best_score:.2f})",
               xlabel="op2", ylabel="op1")
        ax.title.set_fontsize("small")
    fig.suptitle(title)
    return fig
