"""Figures of feature circuits: a pruned attribution graph, and feature-circuit faithfulness
(docs/definitions.md#feature-attribution-graphs, docs/definitions.md#attribution-graph-pruning-and-scores).

An attribution graph's nodes live on a grid: the x axis is the token position, the y axis the place in the forward
pass — token embeddings at the bottom, then per layer its attention dictionary's row and its MLP transcoder's row
(attention first, as the forward pass runs), the logits on top. A dictionary's error nodes share its row. Kept nodes
in one (row, position) cell sit side by side in the graph's node order (features by feature id, then the error
node); each position's column is as wide as its fullest cell needs, so a crowded position (often the last, with
the logits) widens without stretching the others. A node's area grows with its *importance* ``influence + w`` (its
influence on the logits through the graph, plus its own logit weight ``w``, the probability, for a logit node), the
quantity pruning ranks nodes and edges by. An edge ``s → t`` is a straight line whose width and opacity grow with
``|adjacency[t, s]|`` and whose colour gives the sign of the direct effect (red: raises the target, blue: lowers it),
as in :func:`circuitflow.plots.circuit_drawing`. The kept Q and K edges into attention features (LEAP's, see
:mod:`circuitflow.features.typed_edges`), when the graph has them, are dashed (Q) and dotted (K) in the same colours,
scaled alike. Logits are labelled by their token, and the most important features and error nodes by their
dictionary and feature.

Every node kind is one scatter collection (``gid`` ``"nodes:<group>"``), the pruned graph's edges one line
collection (``gid`` ``"edges"``) and the Q and K edges one each (``"edges:Q"``, ``"edges:K"``), so a figure's contents
can be read back from its Axes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from torch import Tensor  # noqa: E402

from circuitflow.features.pruning import graph_influence, node_kinds  # noqa: E402
from circuitflow.features.typed_edges import typed_edges  # noqa: E402
from circuitflow.plots import set_symlog  # noqa: E402

if TYPE_CHECKING:
    from circuitflow.features.attribution import AttributionGraph

# Node groups (a feature's group is its site), drawn in this order, with their colour and legend name.
NODE_GROUPS = {"embedding": ("tab:purple", "token embedding"), "attn": ("tab:orange", "attention SAE feature"),
               "mlp": ("tab:green", "transcoder (MLP) feature"), "error": ("lightgrey", "error node"),
               "logit": ("tab:brown", "logit")}
EDGE_COLOURS = {True: "tab:red", False: "tab:blue"}  # by sign: positive, negative
EDGE_STYLES = {"edges": "solid", "edges:Q": "dashed", "edges:K": "dotted"}  # OV and direct edges, then LEAP's Q and K
CELL_WIDTH = 0.8  # share of a position's column that the nodes of its fullest cell spread over
NODE_GAP = 0.25  # column width per node of a position's fullest cell (a column is at least 1 wide)
NODE_KEYS = ["kind", "site", "layer", "position", "feature", "token"]  # what identifies a node across tables


def node_importance(graph: AttributionGraph) -> Tensor:
    """``influence + w`` ``[n_nodes]``: each node's influence on the logits plus its own logit weight (the logit
    nodes' probabilities, 0 elsewhere)."""
    importance = graph_influence(graph).detach().cpu().double().clone()
    importance[node_kinds(graph).logit_index.cpu()] += graph.logit_probabilities.detach().cpu().double()
    return importance


def node_mask_from_table(graph: AttributionGraph, table: pd.DataFrame) -> Tensor:
    """Boolean ``[n_nodes]``: the graph's nodes whose row in ``table`` (one graph's rows of ``graph_nodes.parquet``,
    matched on :data:`NODE_KEYS`) has ``kept`` true; nodes missing from the table are not kept."""
    missing = [key for key in [*NODE_KEYS, "kept"] if key not in table.columns]
    if missing:
        raise ValueError(f"the node table lacks column(s) {missing}; pass one graph's rows of graph_nodes.parquet")
    right = table[[*NODE_KEYS, "kept"]].astype({"layer": int, "position": int, "feature": int})
    left = graph.nodes[NODE_KEYS].astype({"layer": int, "position": int, "feature": int})
    try:
        merged = left.merge(right, on=NODE_KEYS, how="left", validate="one_to_one")
    except pd.errors.MergeError as error:
        raise ValueError(f"the node table has duplicate nodes ({error}); pass the rows of a single graph") from None
    return torch.as_tensor(merged["kept"].fillna(False).to_numpy(bool))


def _rows(nodes: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Each node's row ``[n_nodes]`` (embeddings 0, then attention and MLP rows by layer, logits last; only rows the
    graph has nodes in) and the rows' names."""
    kind = nodes["kind"].to_numpy()
    order = 2 * nodes["layer"].to_numpy(np.int64) + (nodes["site"].to_numpy() == "mlp")  # emb −2 < attn0 < mlp0 < …
    _, first, rows = np.unique(order, return_index=True, return_inverse=True)
    names = ["embeddings" if kind[i] == "embedding" else "logits" if kind[i] == "logit"
             else f"{nodes['site'].iloc[i]}{nodes['layer'].iloc[i]}" for i in first]
    return rows.reshape(-1), names


class Layout(NamedTuple):
    """Where the kept nodes go: ``x`` ``[n_kept]``, and per position ``[n_pos]`` its column's ``centre`` and the
    gap ``spacing`` between neighbouring nodes of one cell; ``width`` is the sum of the columns' widths."""

    x: np.ndarray
    centre: np.ndarray
    spacing: np.ndarray
    width: float


def _spread(row: np.ndarray, position: np.ndarray, n_pos: int) -> Layout:
    """Columns, one per position, as wide as their fullest cell needs (at least 1, :data:`NODE_GAP` per node), side
    by side; the nodes of one (row, position) cell sit side by side, ``spacing`` apart, centred on the column."""
    cells = pd.DataFrame({"row": row, "position": position})
    slot = cells.groupby(["row", "position"]).cumcount().to_numpy()
    size = cells.groupby(["row", "position"])["row"].transform("size").to_numpy()
    fullest = np.ones(n_pos)
    np.maximum.at(fullest, position, size)
    columns = np.maximum(1.0, NODE_GAP * fullest)
    centre = np.cumsum(columns) - columns / 2
    spacing = CELL_WIDTH * columns / fullest
    return Layout(centre[position] + (slot - (size - 1) / 2) * spacing[position], centre, spacing,
                  float(columns.sum()))


def _short_label(node) -> str:
    """A node's label without its position (the x axis gives it): ``mlp1[37]``, ``err mlp1``, ``'12'``."""
    if node.kind == "feature":
        return f"{node.site}{node.layer}[{node.feature}]"
    if node.kind == "error":
        return f"err {node.site}{node.layer}"
    return repr(node.token)


def _visible(token: str) -> str:
    """A token with its spaces and newlines shown (``␣``, ``⏎``)."""
    return token.replace(" ", "␣").replace("\n", "⏎")


def draw_attribution_graph(graph: AttributionGraph, node_mask: Tensor, edge_mask: Tensor, ax=None, title: str = "",
                           n_labels: int = 10):
    """Draw the pruned ``graph``: the nodes of ``node_mask`` ``[n_nodes]`` and the edges of ``edge_mask[target,
    source]`` ``[n_nodes, n_nodes]`` between them (masks from :func:`~circuitflow.features.pruning.prune`), laid out
    as the module docstring describes, with the ``n_labels`` most important features and error nodes labelled.
    Draws into ``ax`` (a new figure sized to the graph when None) and returns the figure."""
    n = graph.n_nodes
    if tuple(node_mask.shape) != (n,) or tuple(edge_mask.shape) != (n, n):
        raise ValueError(f"node_mask must be [{n}] and edge_mask [{n}, {n}] for this graph, got "
                         f"{list(node_mask.shape)} and {list(edge_mask.shape)}; pass the masks prune() returns")
    keep = torch.as_tensor(node_mask).cpu().numpy().astype(bool)
    nodes = graph.nodes.reset_index(drop=True)
    row, row_names = _rows(nodes)
    n_pos = len(graph.tokens)
    layout = _spread(row[keep], nodes["position"].to_numpy()[keep], n_pos)
    x = np.zeros(n)
    x[keep] = layout.x
    importance = node_importance(graph).numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(min(24.0, 2.5 + 1.1 * layout.width), 1.5 + 0.6 * len(row_names)))

    edges = typed_edges(graph, node_mask, edge_mask)
    scale = edges["weight"].abs().max() if len(edges) else 1.0
    for kind, style in EDGE_STYLES.items():
        mine = edges[edges["type"].isin(["direct", "OV"])] if kind == "edges" else edges[edges["type"] == kind[-1]]
        sources, targets, weights = (mine[c].to_numpy() for c in ("source", "target", "weight"))
        segments = np.stack([np.stack([x[sources], row[sources]], -1), np.stack([x[targets], row[targets]], -1)], 1)
        strength = np.abs(weights) / (scale or 1.0)
        colours = np.where((weights > 0)[:, None], mcolors.to_rgb(EDGE_COLOURS[True]),
                           mcolors.to_rgb(EDGE_COLOURS[False]))
        floor = 0.3 if style == "solid" else 0.9  # dashes and dots need some width and opacity to show
        ax.add_collection(LineCollection(segments.reshape(-1, 2, 2), linewidths=floor + 2.7 * strength, zorder=1,
                                         colors=np.column_stack([colours, 0.15 + floor / 3 + 0.6 * strength]),
                                         linestyles=style, gid=kind))

    group = np.where(nodes["kind"] == "feature", nodes["site"], nodes["kind"])
    biggest = importance[keep].max(initial=0.0) or 1.0
    # the largest marker (area in points²) fits between the closest neighbours in a cell, between 40 and 300
    points_per_unit = ax.get_position().width * ax.figure.get_figwidth() * 72 / (layout.width + 0.2)
    largest = float(np.clip((0.9 * points_per_unit * layout.spacing.min()) ** 2, 40, 300))
    for name, (colour, legend) in NODE_GROUPS.items():
        mine = keep & (group == name)
        if mine.any():
            ax.scatter(x[mine], row[mine], s=0.1 * largest + 0.9 * largest * importance[mine] / biggest, color=colour,
                       edgecolor="0.3", linewidth=0.5, zorder=2, gid=f"nodes:{name}")

    eligible = keep & nodes["kind"].isin(["feature", "error"]).to_numpy()
    ranked = np.argsort(-np.where(eligible, importance, -np.inf), kind="stable")
    labelled = [i for i in ranked[:n_labels] if eligible[i]] + list(np.flatnonzero(keep & (group == "logit")))
    for i in labelled:
        ax.annotate(_short_label(nodes.iloc[i]), (x[i], row[i]), xytext=(0, 5), textcoords="offset points",
                    ha="left", va="bottom", rotation=35, rotation_mode="anchor", fontsize=6, zorder=3)

    ax.set_xticks(layout.centre, [f"{_visible(token)}\n{p}" for p, token in enumerate(graph.tokens)])
    ax.set_yticks(range(len(row_names)), row_names)
    ax.set(xlim=(-0.1, layout.width + 0.1), ylim=(-0.6, len(row_names) - 0.2), xlabel="token (position)",
           ylabel="embeddings, dictionary (site + layer), logits", title=title)
    ax.grid(axis="y", color="0.92", zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    handles = [plt.Line2D([], [], ls="", marker="o", ms=7, color=colour, markeredgecolor="0.3", label=legend)
               for name, (colour, legend) in NODE_GROUPS.items() if (keep & (group == name)).any()]
    handles += [plt.Line2D([], [], color=EDGE_COLOURS[sign], label=f"{'positive' if sign else 'negative'} edge")
                for sign in (True, False)]
    handles += [plt.Line2D([], [], color="0.3", ls=EDGE_STYLES[f"edges:{kind}"], label=f"{kind} edge (pattern)")
                for kind in ("Q", "K") if (edges["type"] == kind).any()]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="node area ∝ influence", title_fontsize="small")
    return ax.figure


def plot_feature_faithfulness(curve: pd.DataFrame, ablation: pd.DataFrame, title: str = ""):
    """Two panels. Left: faithfulness of the circuit of the top-n features by influence against n (``curve``: rows
    graph, prompt, n_features, faithfulness), one line per graph, with the guides f = 1 (the full model) and
    f = 0 (nothing kept). Right: each feature's linear attribution to the top logit against the exact effect of
    ablating it (``ablation``: rows graph, prompt, attribution, ablation, pearson), one colour per graph, its Pearson
    r in the legend and the r of all points pooled in the panel's title. Returns the figure."""
    graphs = list(dict.fromkeys([*curve["graph"], *ablation["graph"]]))
    colours = dict(zip(graphs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(graphs)))
    prompts = dict(zip(ablation["graph"], ablation["prompt"])) | dict(zip(curve["graph"], curve["prompt"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    for graph, rows in curve.sort_values("n_features").groupby("graph", sort=False):
        left.plot(rows["n_features"], rows["faithfulness"], marker="o", ms=3, color=colours[graph],
                  gid=f"graph {graph}")
    left.axhline(1.0, color="grey", lw=0.8, ls="--")
    left.axhline(0.0, color="grey", lw=0.8, ls=":")
    left.set(title="feature circuits of the top-n features", xlabel="features in circuit (n, by influence)",
             ylabel="faithfulness f (metric: top logit − mean logit)")

    pearson = dict(zip(ablation["graph"], ablation["pearson"]))
    for graph, rows in ablation.groupby("graph", sort=False):
        right.scatter(rows["attribution"], rows["ablation"], s=10, alpha=0.7, color=colours[graph],
                      gid=f"graph {graph}")
    if len(ablation):
        right.axline((0.0, 0.0), slope=1.0, color="grey", lw=0.8, ls="--", label="y = x")
        right.legend(fontsize="small", loc="upper left")
    pooled = np.corrcoef(ablation["attribution"], ablation["ablation"])[0, 1] if len(ablation) > 1 else np.nan
    right.set(title=f"attribution vs ablation (pooled Pearson r = {pooled:.2f})",
              xlabel="linear attribution to the top logit", ylabel="exact effect of ablating the feature")
    handles = [plt.Line2D([], [], color=colours[g], marker="o", ms=3, label=f"{prompts[g]!r}"
                          + (f": r = {pearson[g]:.2f}" if g in pearson else "")) for g in graphs]
    fig.legend(handles=handles, title="prompt (Pearson r of attribution vs ablation)", fontsize="small",
               loc="outside lower center", ncols=min(len(graphs), 4) or 1)
    fig.suptitle(title)
    set_symlog(left, "x", curve["n_features"], linthresh=1.0)
    return fig
