"""Draw the first attribution graph of one model and operator (graph 0 of ``features/graphs/{op}``), pruned as the
feature_graphs job pruned it, titled with its prompt and its replacement and completeness scores."""
from pathlib import Path

import pandas as pd
import torch

from circuitflow.features.attribution import AttributionGraph
from circuitflow.features.graph_plots import draw_attribution_graph, node_mask_from_table
from circuitflow.features.pruning import prune
from circuitflow.plots import OP_LABELS, save_figure
from circuitflow.snakejob import snakemake_job

with snakemake_job(snakemake) as log:
    w, p = snakemake.wildcards, snakemake.params.graph
    graph = AttributionGraph.load(Path(snakemake.input.graphs) / "graph_0.pt")
    nodes = pd.read_parquet(snakemake.input.nodes)
    kept = node_mask_from_table(graph, nodes[nodes["graph"] == 0])
    # No table records the kept edges, so prune() — the one definition of the pruned graph — is rerun with the
    # thresholds the feature_graphs job used; its nodes must be the ones the table records as kept, so the figure
    # shows exactly the graph the tables (and the circuit-tracer JSON) describe.
    node_mask, edge_mask = prune(graph, p["node_threshold"], p["edge_threshold"])
    if not torch.equal(node_mask.cpu(), kept):
        raise ValueError(f"graph_nodes.parquet keeps {int(kept.sum())} nodes of graph 0 but prune() of graph_0.pt "
                         f"keeps {int(node_mask.sum())}: the tables are stale, rerun feature_graphs")
    scores = pd.read_parquet(snakemake.input.scores).set_index("graph").loc[0]
    n_edges = int((edge_mask & node_mask[:, None] & node_mask[None, :]).sum())
    log.info("graph 0 (%r): %d of %d nodes and %d edges kept", graph.prompt, int(node_mask.sum()), graph.n_nodes,
             n_edges)
    title = (f"{w.model}, {OP_LABELS[w.op]}: attribution graph of {graph.prompt!r}\n"
             f"replacement score {scores['replacement_score']:.2f}, completeness score "
             f"{scores['completeness_score']:.2f}; {int(node_mask.sum())} of {graph.n_nodes} nodes, {n_edges} edges")
    save_figure(draw_attribution_graph(graph, node_mask, edge_mask, title=title), snakemake.output.png,
                snakemake.output.pdf)
