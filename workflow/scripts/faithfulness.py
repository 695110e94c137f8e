"""Faithfulness of each method's circuits at each configured level (edge, node, neuron) over the configured circuit
sizes, and MIB's CPR/CMD areas per (method, level)."""
import pandas as pd

from circuitflow.circuits import Graph, area_scores, faithfulness_curve
from circuitflow.circuits.job import load_circuit_job
from circuitflow.io import write_parquet
from circuitflow.metrics import get_metric
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import with_labels


# The unit scores a level's selection ranks, where they are not the edge and node scores every graph has.
UNIT_SCORES = {"neuron": "neuron_scores", "mlp-neuron": "hidden_scores"}


def level_selection(selection: str, level: str) -> str:
    """The selection a ``level``'s curve uses: greedy grows edge circuits only, so node and neuron curves use top-n."""
    return selection if level == "edge" else "topn"


with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, c = snakemake.params, snakemake.params.circuits
    job = load_circuit_job(snakemake.input.handle, snakemake.input.prompts, snakemake.input.answers,
                           {**c, "batch_size": perf.circuits_batch_size}, device=perf.device, dtype=p.dtype,
                           device_map=perf.device_map)
    curves, areas = [], []
    for method, path in zip(c["methods"], snakemake.input.graphs):
        graph = Graph.load(path)
        for level in c["levels"]:
            if level in UNIT_SCORES and getattr(graph, UNIT_SCORES[level]) is None:
                log.info("%s: the graph has no %s (exact scores are edge scores only), so no %s-level curve", method,
                         UNIT_SCORES[level], level)
                continue
            selection = level_selection(c["selection"], level)
            if selection != c["selection"]:
                log.info("%s, %s level: %s selection is edge-level only, so this curve uses topn", method, level,
                         c["selection"])
            curve = faithfulness_curve(job.bridge, graph, job.batches, get_metric(c["metric"]), c["intervention"],
                                       fractions=c["fractions"], selection=selection, absolute=c["absolute"],
                                       level=level, means=job.means, hidden_means=job.hidden_means,
                                       tracer=job.tracer)
            curves.append(with_labels(curve, method=method))
            areas.append(dict(method=method, level=level, **area_scores(curve), selection=selection,
                              absolute=c["absolute"]))
            log.info("%s, %s level: CPR %.3f, CMD %.3f", method, level, areas[-1]["cpr"], areas[-1]["cmd"])
    if not curves:
        raise ValueError(f"circuits.levels {c['levels']}: no method's graph has the unit scores these levels select "
                         "by; add edge or node to circuits.levels")
    table, area_table = pd.concat(curves, ignore_index=True), pd.DataFrame(areas)
    for frame in (table, area_table):
        with_labels(frame, model=job.handle.name, revision=job.handle.revision, operator=snakemake.wildcards.op)
        frame["metric_name"] = c["metric"]
    write_parquet(table, snakemake.output.curve)
    write_parquet(area_table, snakemake.output.areas)
