"""Figures drawn from the workflow's tables (PNG and PDF, with titles and axis labels)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter  # noqa: E402

from circuitflow.io import atomic_path  # noqa: E402
from circuitflow.names import component_name  # noqa: E402

OP_LABELS = {"add": "+", "sub": "−", "mul": "×", "div": "÷"}


def symlog_threshold(values) -> float:
    """Linear threshold of a symmetric-log axis for ``values``: the power of ten at or below their 10th-percentile
    nonzero magnitude, at most a tenth of the largest, so the axis always shows a decade beyond it (1 if all are 0)."""
    magnitudes = np.abs(np.asarray(values, dtype=float))
    magnitudes = magnitudes[np.isfinite(magnitudes) & (magnitudes > 0)]
    if not len(magnitudes):
        return 1.0
    return float(10.0 ** np.floor(np.log10(min(np.quantile(magnitudes, 0.1), magnitudes.max() / 10))))


# How much axis length (inches) a decade's label such as "−10⁻²" needs: its width on x, its height on y.
LABEL_INCHES = {"x": 0.55, "y": 0.28}


def set_symlog(ax, axis: str, values, linthresh: float | None = None) -> None:
    """Symmetric-log ``axis`` ("x" or "y") of ``ax`` for ``values`` (linear below ``linthresh``, by default
    :func:`symlog_threshold`), labelled at whole decades only (minor ticks' labels would read "−2.38525×10⁻¹"),
    spaced so that no two labels overprint. Call it once the figure holds everything else (legends, suptitle): it
    measures the axis after the layout."""
    getattr(ax, f"set_{axis}scale")("symlog", linthresh=linthresh or symlog_threshold(values))
    ax.autoscale_view(scalex=axis == "x", scaley=axis == "y")  # a drawn figure keeps its linear limits otherwise
    scale = getattr(ax, f"{axis}axis")
    scale.set_minor_formatter(NullFormatter())
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    low, high = min(float(finite.min(initial=0.0)), 0.0), max(float(finite.max(initial=0.0)), 0.0)
    if high == low:
        return
    exponents = np.arange(np.log10(scale.get_transform().linthresh), np.log10(max(-low, high)) + 1e-9)
    decades = [t for e in exponents for t in (10.0 ** e, -(10.0 ** e)) if low <= t <= high] + [0.0]
    forward = scale.get_transform().transform
    ax.figure.draw_without_rendering()  # lay the figure out, so the axis has its final length
    box = ax.get_position()
    length = box.width * ax.figure.get_figwidth() if axis == "x" else box.height * ax.figure.get_figheight()

    def position(tick: float) -> float:
        return (forward(tick) - forward(low)) / (forward(high) - forward(low))

    scale.set_major_locator(FixedLocator(spaced_ticks(decades, position, LABEL_INCHES[axis] / length)))


def spaced_ticks(ticks, position, min_gap: float) -> list[float]:
    """The ``ticks`` to label, largest magnitudes and 0 first, dropping any whose ``position`` (0..1 along the axis)
    lies within ``min_gap`` of one already kept, so their labels never overprint."""
    kept: list[float] = []
    for tick in sorted(ticks, key=lambda t: (t != 0, -abs(t), -t)):
        if all(abs(float(position(tick)) - float(position(k))) >= min_gap for k in kept):
            kept.append(tick)
    return sorted(kept)


# What savefig may stamp into a file besides the drawing: a PDF's CreationDate (a PNG carries only the matplotlib
# version), so the same figure gives the same bytes on every run.
STABLE_METADATA = {"pdf": {"CreationDate": None}, "png": {}}


def save_figure(fig, png: Path | str, pdf: Path | str | None = None) -> None:
    """Save ``fig`` atomically as PNG (and PDF), byte-reproducibly, and close it."""
    for path in (png, pdf):
        if path is not None:
            fmt = Path(path).suffix[1:]
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata=STABLE_METADATA.get(fmt))
    plt.close(fig)


def accuracy_bars(table: pd.DataFrame):
    """Grouped bars: accuracy per operator (groups) and model (bars), from an accuracy table."""
    pivot = table.pivot(index="operator", columns="model", values="accuracy")
    pivot = pivot.reindex([op for op in OP_LABELS if op in pivot.index])
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(pivot), 3.5))
    pivot.rename(index=OP_LABELS).plot.bar(ax=ax, rot=0, width=0.8)
    ax.set(title="Accuracy on all legal prompts", xlabel="operator", ylabel="accuracy", ylim=(0, 1.05))
    ax.legend(title="model", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # never over the bars
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


# What a circuit's size counts at each level (the x axis of its faithfulness curve).
LEVEL_UNITS = {"edge": "edges", "node": "nodes", "neuron": "neurons (output dimensions)",
               "mlp-neuron": "input, heads and MLP neurons"}


def faithfulness_curves(curve: pd.DataFrame, title: str):
    """Faithfulness against circuit size (fraction of the level's units, log scale): one panel per circuit level
    (edge, node, neuron, mlp-neuron; the table's ``level`` column), one line per attribution method, one legend for all."""
    levels = list(dict.fromkeys(curve["level"]))
    methods = list(dict.fromkeys(curve["method"]))
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(methods)))
    fig, axes = plt.subplots(1, len(levels), figsize=(0.6 + 3.6 * len(levels), 3.9), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, level in zip(axes[0], levels):
        for method, rows in curve[curve["level"] == level].groupby("method", sort=False):
            ax.plot(rows["fraction"] * 100, rows["faithfulness"], marker="o", ms=3, color=colours[method],
                    label=method)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set(title=f"{level} level", xlabel=f"{LEVEL_UNITS[level]} in circuit (%)")
    axes[0, 0].set_ylabel("faithfulness f(C)")
    handles = [plt.Line2D([], [], color=colours[m], marker="o", ms=3, label=m) for m in methods]
    fig.legend(handles=handles, title="method", fontsize="small", loc="outside lower center",
               ncols=min(len(methods), 2 * len(levels)))
    fig.suptitle(title)
    return fig


def circuit_drawing(graph, title: str):
    """The circuit of ``graph`` at its level: the ``in_graph`` edges (at node and neuron level, every valid outgoing
    edge of a kept node), nodes laid out by layer, edge width ∝ |score|, red for positive and blue for negative
    scores; the circuit's nodes (:meth:`Graph.nodes_in_graph`) in black, the others grey. At neuron level each node's
    label also gives how many of its output dimensions are kept (``kept/d_model``). Edges and nodes carry their
    names as ``gid`` (``"u->v"``, ``"v"``)."""
    layout = {"input": (0.5 * (graph.n_heads - 1), 0.0)}
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            layout[component_name(layer, h)] = (float(h), 2.0 * layer + 1)
        layout[component_name(layer)] = (0.5 * (graph.n_heads - 1), 2.0 * layer + 2)
    layout["logits"] = (0.5 * (graph.n_heads - 1), 2.0 * graph.n_layers + 1)
    names = graph.upstream_names() + ["logits"]
    owners = graph.down_owner()
    targets = [[names[int(j)] for j in owners[d].nonzero()] for d in range(graph.n_down)]
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * graph.n_heads, 1.2 + 0.9 * (2 * graph.n_layers + 1)))
    edges = graph.in_graph.nonzero().tolist()
    biggest = max((abs(float(graph.scores[u, d])) for u, d in edges), default=1.0) or 1.0
    for u, d in edges:
        score = float(graph.scores[u, d])
        for target in targets[d]:
            (x0, y0), (x1, y1) = layout[names[u]], layout[target]
            bend = 0.25 * np.sign(x1 - x0 + 1e-9) if abs(y1 - y0) > 1 else 0.0
            ax.annotate("", (x1, y1), (x0, y0), gid=f"{names[u]}->{target}", arrowprops=dict(
                arrowstyle="-", lw=0.3 + 4 * abs(score) / biggest, alpha=0.7,
                color="tab:red" if score > 0 else "tab:blue", connectionstyle=f"arc3,rad={bend}"))
    used = dict(zip(names, graph.nodes_in_graph().tolist()))
    kept = {} if graph.neuron_in_graph is None else dict(zip(names, graph.neuron_in_graph.sum(1).tolist()))
    for name, (x, y) in layout.items():
        colour = "black" if used[name] else "lightgrey"
        ax.scatter([x], [y], s=520, color="white", edgecolor=colour, zorder=3)
        label = f"{name}\n{kept[name]}/{graph.d_model}" if name in kept else name
        ax.text(x, y, label, ha="center", va="center", fontsize=6 if name not in kept else 5, zorder=4, color=colour,
                gid=name)
    ax.set(title=title, xlim=(-0.8, graph.n_heads - 0.2), ylim=(-0.8, 2 * graph.n_layers + 1.8))
    ax.axis("off")
    return fig


def ie_heatmaps(table: pd.DataFrame, title: str, value: str = "ie_median"):
    """IE map: one panel per prompt position, layers × (heads, MLP), mean over seeds of ``value`` (by default the
    median IE over prompts: the mean IE explodes when a patch flips a confident answer)."""
    from matplotlib.colors import SymLogNorm

    positions = ["op1", "operator", "op2", "last"]
    n_layers, n_heads = int(table["layer"].max()) + 1, int(table["head"].max()) + 1
    height = 1.5 + 0.35 * n_layers + 1
    fig, axes = plt.subplots(1, 4, figsize=(2.2 + 1.0 * 4 * (n_heads + 1) * 0.45, height),
                             sharey=True, squeeze=False, layout="constrained")
    means = table.groupby(["layer", "component", "head", "position"])[value].mean().reset_index()
    limit = float(np.nanmax(np.abs(means[value]))) or 1.0
    # IE spans many orders of magnitude (it divides by P*(r)): a symmetric log scale shows them all
    norm = SymLogNorm(linthresh=min(1e-2, limit), vmin=-limit, vmax=limit)
    for ax, position in zip(axes[0], positions):
        grid = np.full((n_layers, n_heads + 1), np.nan)
        for row in means[means["position"] == position].itertuples():
            grid[row.layer, n_heads if row.component == "mlp" else row.head] = getattr(row, value)
        image = ax.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower")
        ax.set_xticks(range(n_heads + 1), [f"h{h}" for h in range(n_heads)] + ["m"], fontsize=6)
        ax.set_yticks(range(n_layers))
        ax.set(title=position, xlabel="component (h: head, m: MLP)")
    axes[0][0].set_ylabel("layer l")
    exponents = np.arange(np.floor(np.log10(norm.linthresh)), np.floor(np.log10(limit)) + 1)  # decades in the bar
    decades = {0.0, *(10.0 ** exponents), *(-(10.0 ** exponents))}
    ticks = spaced_ticks(decades, norm, min_gap=LABEL_INCHES["y"] / (0.75 * height))  # the bar: ~0.75 of the height
    fig.colorbar(image, ax=axes[0].tolist(), label=value.replace("_", " "), ticks=ticks)
    fig.suptitle(title)
    return fig


def neuron_panels(table: pd.DataFrame, title: str):
    """Left: exact per-neuron IE against the attribution score on the last exactly patched layer (Spearman in the
    title: IE is unbounded, so a few flipped prompts dominate Pearson); right: each layer's importance scores sorted
    in decreasing order."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    exact = table.dropna(subset=["exact_ie"])
    if len(exact):
        layer = int(exact["layer"].max())
        rows = exact[exact["layer"] == layer]
        rho = rows["attribution_mean"].rank().corr(rows["exact_ie"].rank())  # Spearman
        left.scatter(rows["attribution_mean"], rows["exact_ie"], s=6, alpha=0.6)
        left.set(title=f"{component_name(layer)} neurons: exact vs attribution (Spearman {rho:.3f})",
                 xlabel="attribution (mean IE)", ylabel="exact patching IE (mean)")
    else:
        left.text(0.5, 0.5, "no layer patched exactly\n(localization.exact_neuron_layers)", ha="center",
                  va="center", transform=left.transAxes)
        left.set_axis_off()
    for layer, rows in table.groupby("layer"):
        right.plot(np.sort(rows["importance"].to_numpy())[::-1], label=component_name(layer))
    right.set(title="neuron importance (mean + std), sorted", xlabel="rank", ylabel="importance", xscale="symlog")
    # beside the curves, in columns of at most 12 (a 24-layer model's legend would cover them)
    right.legend(title="neurons of", fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                 ncols=-(-table["layer"].nunique() // 12))
    fig.suptitle(title)
    if len(exact):
        set_symlog(left, "x", rows["attribution_mean"])
        set_symlog(left, "y", rows["exact_ie"])
    return fig


def probe_curves(table: pd.DataFrame, title: str):
    """Probe test accuracy against layer, one line per prompt position."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for position, rows in table.groupby("position", sort=False):
        ax.plot(rows["layer"], rows["accuracy"], marker="o", ms=3, label=position)
    ax.set(title=title, xlabel="residual stream entering layer (last = final norm)", ylabel="probe test accuracy",
           ylim=(-0.02, 1.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers, not 0.25 of one
    ax.legend(title="position")
    return fig


def paper_faithfulness(table: pd.DataFrame, title: str, value: str = "faithfulness_median"):
    """Faithfulness of the paper's circuits against neurons kept per layer, one line per operator (dashed: random
    neurons, mean over seeds). The median over prompts of the per-prompt F by default: its mean is dominated by the
    few prompts whose full and empty normalized logits nearly coincide."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, (op, rows) in enumerate(table.groupby("operator", sort=False)):
        color = f"C{i}"
        top = rows[rows["circuit"] == "top"].sort_values("k")
        ax.plot(top["k"], top[value], marker="o", ms=3, color=color, label=OP_LABELS.get(op, op))
        rand = rows[rows["circuit"] == "random"].groupby("k")[value].mean()
        if len(rand):
            ax.plot(rand.index, rand.to_numpy(), ls="--", color=color, alpha=0.6)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set(title=title, xlabel="neurons kept per layer from the heuristics layer on",
           ylabel=f"{value.replace('_', ' ')} (NL, mean ablation)")
    ax.legend(title="operator (dashed: random)", fontsize="small")
    return fig


def attention_panels(grid: pd.DataFrame, ov: pd.DataFrame, title: str):
    """Per head: attention from the last position to op1, operator and op2 over the operand grid, and the OV
    transition matrix between number tokens."""
    heads = grid[["layer", "head"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(max(1, len(heads)), 4, figsize=(14, 3.3 * max(1, len(heads))), squeeze=False,
                             layout="constrained")
    for row, (layer, head) in zip(axes, heads):
        rows = grid[(grid["layer"] == layer) & (grid["head"] == head)]
        for ax, target in zip(row[:3], ("op1", "operator", "op2")):
            part = rows[rows["target"] == target].pivot(index="op1", columns="op2", values="attention")
            image = ax.imshow(part.to_numpy(), vmin=0, vmax=1, origin="lower", cmap="viridis")
            ax.set(title=f"{component_name(layer, head)} → {target}", xlabel="op2", ylabel="op1")
        fig.colorbar(image, ax=row[2], fraction=0.046, label="attention")
        matrix = ov[(ov["layer"] == layer) & (ov["head"] == head)].pivot(index="input_number", columns="output_number",
                                                                         values="value")
        limit = float(np.abs(matrix.to_numpy()).max()) or 1.0
        image = row[3].imshow(matrix.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
        row[3].set(title=f"{component_name(layer, head)} OV circuit", xlabel="output number", ylabel="input number")
        fig.colorbar(image, ax=row[3], fraction=0.046, label="logit contribution")
    if not heads:
        axes[0][0].text(0.5, 0.5, "no heads chosen (localization.attention_heads = 0)", ha="center")
    fig.suptitle(title)
    return fig


def checkpoint_ie(table: pd.DataFrame, title: str, n_components: int = 5, value: str = "ie_median"):
    """Per operator: ``value`` at the last position across training steps for the ``n_components`` components with
    the largest value at the final step (log-scaled steps, step 0 drawn at 0.5; symmetric-log y axis)."""
    ops = [op for op in OP_LABELS if op in set(table["operator"])]
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.6), squeeze=False, layout="constrained")
    last = table[table["position"] == "last"].copy()
    last["name"] = [component_name(layer, None if c == "mlp" else h) for layer, c, h in
                    zip(last["layer"], last["component"], last["head"])]
    shown = {}
    for ax, op in zip(axes[0], ops):
        rows = last[last["operator"] == op]
        final = rows[rows["step"] == rows["step"].max()].sort_values(value, ascending=False)
        shown[ax] = [-1e-2]
        for name in final["name"].head(n_components):
            series = rows[rows["name"] == name].groupby("step")[value].mean()
            ax.plot(series.index.to_numpy().clip(min=0.5), series.to_numpy(), marker="o", ms=2, label=name)
            shown[ax] += series.tolist()
        ax.set_xscale("log")
        ax.set_ylim(bottom=min(shown[ax]))
        ax.set(title=OP_LABELS[op], xlabel="training step", ylabel=value.replace("_", " "))
        ax.legend(fontsize="x-small")
    fig.suptitle(title)
    for ax, values in shown.items():
        set_symlog(ax, "y", values, linthresh=1e-2)
    return fig


def heuristic_summary(table: pd.DataFrame, knockout: pd.DataFrame, prompt_knockout: pd.DataFrame, title: str):
    """Left: classified neurons implementing at least one heuristic of each family; middle: heuristic knockout,
    accuracy on the heuristic's prompts against the random-neuron control (one point per heuristic, size ∝ neurons;
    below the diagonal = the heuristic's neurons matter more than random ones); right: prompt knockout, accuracy
    against the matching neurons ablated per layer, with the random control."""
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    matched = table[table["matched"]]
    counts = matched.drop_duplicates(["layer", "neuron", "family"]).groupby("family").size().sort_values()
    n_neurons = len(table.drop_duplicates(["layer", "neuron"]))
    n_matched = len(matched.drop_duplicates(["layer", "neuron"]))
    left.barh(counts.index, counts.to_numpy())
    left.set(title=f"{n_matched} of {n_neurons} neurons match a heuristic", xlabel="neurons matching the family")
    if len(knockout):
        middle.scatter(knockout["accuracy_random"], knockout["accuracy_associated"], s=8 + 4 * knockout["n_neurons"],
                       alpha=0.6, label="heuristic's prompts")
        middle.scatter(knockout["accuracy_random"], knockout["accuracy_unassociated"], s=8, alpha=0.6, marker="x",
                       label="other prompts")
        middle.legend(fontsize="small")
    middle.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    middle.set(title="heuristic knockout", xlabel="accuracy, as many random neurons ablated",
               ylabel="accuracy, heuristic's neurons ablated", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    curve = prompt_knockout.sort_values("neurons_per_layer")
    right.plot(curve["neurons_per_layer"], curve["accuracy"], marker="o", ms=3,
               label="neurons of the prompt's heuristics")
    right.plot(curve["neurons_per_layer"], curve["accuracy_random"], marker="o", ms=3, ls="--", label="random neurons")
    right.set(title="prompt knockout", xlabel="neurons ablated per layer", ylabel="accuracy", xscale="log",
              ylim=(-0.02, 1.02))
    right.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def heuristic_maps(maps: pd.DataFrame, title: str):
    """Each kept neuron's last-position activation over the operand grid (op1 rows, op2 columns; blank = illegal
    pair), titled with its best heuristic and match score."""
    neurons = maps.drop_duplicates(["layer", "neuron"])
    n = max(len(neurons), 1)
    cols = min(n, 3)
    fig, axes = plt.subplots(-(-n // cols), cols, figsize=(3.8 * cols, 3.4 * -(-n // cols)), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for ax, row in zip(axes.flat, neurons.itertuples(index=False)):
        rows = maps[(maps["layer"] == row.layer) & (maps["neuron"] == row.neuron)]
        grid = np.full((int(maps["op1"].max()) + 1, int(maps["op2"].max()) + 1), np.nan)
        grid[rows["op1"].to_numpy(), rows["op2"].to_numpy()] = rows["activation"].to_numpy()
        image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, fraction=0.046)
        name = component_name(row.layer, neuron=row.neuron)
        ax.set(title=f"{name}: {row.best_heuristic} ({row.best_score:.2f})", xlabel="op2", ylabel="op1")
        ax.title.set_fontsize("small")
    fig.suptitle(title)
    return fig


def checkpoint_heuristics(table: pd.DataFrame, title: str):
    """Per operator against training step: left, the share of the final model's (neuron, heuristic) matches already
    present; right, accuracy after the prompt knockout with the most neurons per layer (solid) and with as many
    random neurons (dashed), on the prompts each checkpoint answers correctly."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    j = table["neurons_per_layer"].max()
    for i, (op, rows) in enumerate(table[table["neurons_per_layer"] == j].sort_values("step").groupby("operator",
                                                                                                      sort=False)):
        color, steps = f"C{i}", rows["step"].clip(lower=0.5)
        left.plot(steps, rows["final_matches_present"], marker="o", ms=3, color=color, label=OP_LABELS.get(op, op))
        right.plot(steps, rows["knockout_accuracy"], marker="o", ms=3, color=color, label=OP_LABELS.get(op, op))
        right.plot(steps, rows["knockout_accuracy_random"], ls="--", color=color)
    left.set(title="final heuristic matches already present", xlabel="training step (0 drawn at 0.5)",
             ylabel="share of the final model's", xscale="log", ylim=(-0.02, 1.02))
    right.set(title=f"prompt knockout, {j} neurons per layer (dashed: random)", xlabel="training step (0 drawn at 0.5)",
              ylabel="accuracy on correct prompts", xscale="log", ylim=(-0.02, 1.02))
    left.legend(title="operator", fontsize="small")
    fig.suptitle(title)
    return fig
