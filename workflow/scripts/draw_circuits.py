"""Draw the top edges (pruned to input-to-logits paths) of each method's graph."""
from circuitflow.circuits import Graph
from circuitflow.logs import log_to
from circuitflow.plots import OP_LABELS, circuit_drawing, save_figure

with log_to(snakemake.log[0]) as log:
    p, w = snakemake.params, snakemake.wildcards
    for method, path, png in zip(p.methods, snakemake.input.graphs, snakemake.output.pngs):
        graph = Graph.load(path).select_topn(p.n_edges, p.absolute).prune()
        log.info("%s: %d of the top %d edges lie on input-to-logits paths", method, graph.n_edges, p.n_edges)
        save_figure(circuit_drawing(graph, f"{w.model}, {OP_LABELS[w.op]}: {method} (top {p.n_edges} edges, "
                                           f"{graph.n_edges} on paths)"), png)
