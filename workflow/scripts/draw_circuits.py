"""Draw each method's circuit at edge level (its top edges, pruned to input-to-logits paths), and one method's at
node and neuron level: as many nodes as its edge drawing touches, and as many output dimensions as those nodes
have."""
from circuitflow.circuits import Graph
from circuitflow.logs import log_to
from circuitflow.plots import OP_LABELS, circuit_drawing, save_figure


def edge_circuit(path: str, n_edges: int, absolute: bool) -> Graph:
    """The top ``n_edges`` edges of the graph at ``path`` that lie on input-to-logits paths."""
    return Graph.load(path).select_topn(n_edges, absolute).prune()


def level_circuit(path: str, level: str, n_nodes: int, absolute: bool) -> tuple[Graph, str]:
    """The graph at ``path`` with its top ``n_nodes`` nodes (node level) or top ``n_nodes × d_model`` output
    dimensions (neuron level) as circuit, and its size in words."""
    graph = Graph.load(path)
    if level == "node":
        graph.select_topn(n_nodes, absolute, level="node")
        return graph, f"top {graph.n_nodes - 1} of {graph.n_up} nodes"
    graph.select_topn(n_nodes * graph.d_model, absolute, level="neuron")
    return graph, (f"top {graph.n_neurons} of {graph.n_up * graph.d_model} output dimensions, "
                   f"in {graph.n_nodes - 1} nodes")


with log_to(snakemake.log[0]) as log:
    p, w = snakemake.params, snakemake.wildcards
    where = f"{w.model}, {OP_LABELS[w.op]}"
    paths, touched = dict(zip(p.methods, snakemake.input.graphs)), {}
    for (method, level), png in zip(p.drawings, snakemake.output.pngs):  # every edge level drawing comes first
        if level == "edge":
            graph = edge_circuit(paths[method], p.n_edges, p.absolute)
            touched[method] = int(graph.nodes_in_graph()[:-1].sum())
            size = f"top {p.n_edges} edges, {graph.n_edges} on paths, touching {touched[method]} nodes"
        else:
            graph, size = level_circuit(paths[method], level, touched[method], p.absolute)
        log.info("%s, %s level: %s", method, level, size)
        save_figure(circuit_drawing(graph, f"{where}: {method}, {level} level\n{size}"), png)
