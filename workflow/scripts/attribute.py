"""Score every edge of one model's graph on one operator's prompt pairs, with each configured method."""
import pandas as pd

from circuitflow.circuits import Tracer, agreement, attribute, pair_batches
from circuitflow.io import write_parquet
from circuitflow.logs import log_to
from circuitflow.metrics import get_metric
from circuitflow.models import load_bridge, read_handle

with log_to(snakemake.log[0]) as log:
    p, c = snakemake.params, snakemake.params.circuits
    handle = read_handle(snakemake.input.handle)
    bridge = load_bridge(handle, p.device, p.dtype, p.device_map)
    prompts = pd.read_parquet(snakemake.input.prompts)
    batches = pair_batches(prompts, bridge.tokenizer, c["batch_size"])
    tracer = Tracer(bridge)
    graphs = {}
    for method, pt, js in zip(c["methods"], snakemake.output.graphs, snakemake.output.json):
        graph = attribute(bridge, batches, get_metric(c["metric"]), method, c["intervention"], c["ig_steps"],
                          tracer=tracer)
        graph.meta.update(model=handle.name, revision=handle.revision, operator=snakemake.wildcards.op,
                          metric=c["metric"])
        graph.save(pt)
        graph.to_json(js)
        graphs[method] = graph
        log.info("%s: %d edges scored on %d pairs", method, graph.n_valid_edges, graph.meta["n_examples"])
    rows = [dict(model=handle.name, operator=snakemake.wildcards.op, method=m, **agreement(g, graphs["exact"]))
            for m, g in graphs.items() if "exact" in graphs and m != "exact"]
    for row in rows:
        log.info("%s vs exact: Pearson %.3f, Spearman %.3f", row["method"], row["pearson"], row["spearman"])
    columns = ["model", "operator", "method", "pearson", "spearman", "n_edges"]
    write_parquet(pd.DataFrame(rows, columns=columns), snakemake.output.agreement)
