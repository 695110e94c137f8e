"""Score every edge of one model's graph on one operator's prompt pairs, with each configured method."""
import pandas as pd

from circuitflow.circuits import agreement, attribute
from circuitflow.circuits.job import load_circuit_job
from circuitflow.io import write_parquet
from circuitflow.metrics import get_metric
from circuitflow.provenance import current as current_provenance
from circuitflow.snakejob import job_performance, snakemake_job

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, c, op = snakemake.params, snakemake.params.circuits, snakemake.wildcards.op
    job = load_circuit_job(snakemake.input.handle, snakemake.input.prompts, snakemake.input.answers,
                           {**c, "batch_size": perf.circuits_batch_size}, device=perf.device, dtype=p.dtype,
                           device_map=perf.device_map)
    graphs = {}
    for method, pt, js in zip(c["methods"], snakemake.output.graphs, snakemake.output.json):
        # MLP hidden-neuron scores (the mlp-neuron level) for every gradient method: one more forward per batch
        graph = attribute(job.bridge, job.batches, get_metric(c["metric"]), method, c["intervention"],
                          ig_steps=c["ig_steps"], means=job.means, hidden=method != "exact",
                          hidden_means=job.hidden_means, tracer=job.tracer)
        graph.meta.update(model=job.handle.name, revision=job.handle.revision, operator=op, metric=c["metric"],
                          provenance=current_provenance())
        graph.save(pt)
        graph.to_json(js)
        graphs[method] = graph
        log.info("%s: %d edges scored on %d pairs", method, graph.n_valid_edges, graph.meta["n_examples"])
    rows = [dict(model=job.handle.name, operator=op, method=m, **agreement(g, graphs["exact"]))
            for m, g in graphs.items() if "exact" in graphs and m != "exact"]
    for row in rows:
        log.info("%s vs exact: Pearson %.3f, Spearman %.3f", row["method"], row["pearson"], row["spearman"])
    columns = ["model", "operator", "method", "pearson", "spearman", "n_edges"]
    write_parquet(pd.DataFrame(rows, columns=columns), snakemake.output.agreement)
