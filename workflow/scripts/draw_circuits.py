"""Draw each method's circuit at edge level (its top edges, pruned to input-to-logits paths), and one method's at
node and neuron level: the smallest circuit of its faithfulness curve at that level whose faithfulness reaches
``circuits.draw_faithfulness``."""
import math

import pandas as pd

from circuitflow.circuits import Graph
from circuitflow.logs import log_to
from circuitflow.plots import OP_LABELS, circuit_drawing, save_figure


def edge_circuit(path: str, n_edges: int, absolute: bool) -> Graph:
    """The top ``n_edges`` edges of the graph at ``path`` that lie on input-to-logits paths."""
    return Graph.load(path).select_topn(n_edges, absolute).prune()


def level_circuit(path: str, curve: pd.DataFrame, level: str, target: float, absolute: bool) -> tuple[Graph, str]:
    """The graph at ``path`` with, as circuit, the smallest top-n circuit of ``curve`` (one method's faithfulness
    curve at ``level``) whose faithfulness reaches ``target``, and its size in words."""
    graph = Graph.load(path)
    rows = curve.sort_values("fraction")
    hit = rows[rows["faithfulness"] >= target].iloc[0] if (rows["faithfulness"] >= target).any() else rows.iloc[-1]
    graph.select_topn(max(1, math.ceil(hit["fraction"] * graph.n_units(level))), absolute, level=level)
    reached = f"f = {hit['faithfulness']:.2f}: the smallest curve size with f ≥ {target:g}"
    if level == "node":
        return graph, f"top {graph.n_nodes - 1} of {graph.n_up} nodes, {reached}"
    units = f"{graph.n_neurons} of {graph.n_units(level)} output dimensions in {graph.n_nodes - 1} nodes"
    return graph, f"{units}, {reached}"


with log_to(snakemake.log[0]) as log:
    p, w = snakemake.params, snakemake.wildcards
    where = f"{w.model}, {OP_LABELS[w.op]}"
    paths = dict(zip(p.methods, snakemake.input.graphs))
    curves = pd.read_parquet(snakemake.input.curve)
    for (method, level), png in zip(p.drawings, snakemake.output.pngs):
        if level == "edge":
            graph = edge_circuit(paths[method], p.n_edges, p.absolute)
            size = f"top {p.n_edges} edges, {graph.n_edges} on paths"
        else:
            curve = curves[(curves["method"] == method) & (curves["level"] == level)]  # top-n at these levels
            graph, size = level_circuit(paths[method], curve, level, p.faithfulness, p.absolute)
        log.info("%s, %s level: %s", method, level, size)
        save_figure(circuit_drawing(graph, f"{where}: {method}, {level} level\n{size}"), png)
