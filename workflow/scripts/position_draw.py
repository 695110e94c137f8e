"""Draw the top (edge, position) pairs (pruned to input-to-logits paths) of each method's position-aware graph."""
from circuitflow.circuits.positions import PositionGraph
from circuitflow.logs import log_to
from circuitflow.plots import OP_LABELS, save_figure
from circuitflow.position_plots import position_circuit_drawing

with log_to(snakemake.log[0]) as log:
    p, w = snakemake.params, snakemake.wildcards
    for method, path, png in zip(p.methods, snakemake.input.graphs, snakemake.output.pngs):
        graph = PositionGraph.load(path).select_topn(p.n_edges, p.absolute).prune()
        log.info("%s: %d of the top %d (edge, position) pairs lie on input-to-logits paths", method, graph.n_edges,
                 p.n_edges)
        title = (f"{w.model}, {OP_LABELS[w.op]}: {method} by position (top {p.n_edges} (edge, position) pairs, "
                 f"{graph.n_edges} on paths)")
        save_figure(position_circuit_drawing(graph, title), png)
