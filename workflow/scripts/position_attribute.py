"""Position-aware graphs of one model on one operator's prompt pairs of its most common token length, with each
configured method, and the faithfulness of their circuits at each configured level."""
import tempfile
from pathlib import Path

import pandas as pd

from circuitflow.circuits import area_scores
from circuitflow.circuits.job import load_circuit_job
from circuitflow.circuits.positions import attribute_positions, faithfulness_curve, most_common_length, position_labels
from circuitflow.io import write_parquet
from circuitflow.metrics import get_metric
from circuitflow.provenance import current as current_provenance
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import read_table, with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, c, pc, op = snakemake.params, snakemake.params.circuits, snakemake.params.positions, snakemake.wildcards.op
    prompts = read_table(snakemake.input.prompts, ["operator", "op1", "op2", "prompt", "prompt_len"])
    kept = most_common_length(prompts)
    log.info("%d of %d prompt pairs have the most common token length (%d tokens): the position-aware prompts",
             len(kept), len(prompts), kept["prompt_len"].iloc[0])
    with tempfile.TemporaryDirectory() as tmp:  # the job loader reads a table file: give it the kept pairs
        path = Path(tmp) / "prompts.parquet"
        kept.to_parquet(path)
        job = load_circuit_job(snakemake.input.handle, str(path), snakemake.input.answers,
                               {**c, "batch_size": perf.circuits_batch_size}, device=perf.device, dtype=p.dtype,
                               device_map=perf.device_map)
    labels = position_labels(kept, job.tokenizer)
    log.info("positions: %s", ", ".join(labels))
    metric, curves, areas = get_metric(c["metric"]), [], []
    for method, pt, js in zip(pc["methods"], snakemake.output.graphs, snakemake.output.json):
        graph = attribute_positions(job.bridge, job.batches, metric, method, c["intervention"], ig_steps=c["ig_steps"],
                                    means=job.means, positions=labels, tracer=job.tracer)
        graph.meta.update(model=job.handle.name, revision=job.handle.revision, operator=op, metric=c["metric"],
                          provenance=current_provenance())
        graph.save(pt)
        graph.to_json(js)
        log.info("%s: %d (edge, position) pairs scored on %d pairs", method, graph.n_valid, graph.meta["n_examples"])
        for level in pc["levels"]:
            curve = faithfulness_curve(job.bridge, graph, job.batches, metric, c["intervention"],
                                       fractions=c["fractions"], absolute=c["absolute"], level=level, means=job.means,
                                       tracer=job.tracer)
            curves.append(with_labels(curve, method=method))
            areas.append(dict(method=method, level=level, **area_scores(curve), absolute=c["absolute"]))
            log.info("%s, %s level: CPR %.3f, CMD %.3f", method, level, areas[-1]["cpr"], areas[-1]["cmd"])
    table, area_table = pd.concat(curves, ignore_index=True), pd.DataFrame(areas)
    for frame in (table, area_table):
        with_labels(frame, model=job.handle.name, revision=job.handle.revision, operator=op)
        frame["metric_name"] = c["metric"]
        frame["n_positions"] = len(labels)
    write_parquet(table, snakemake.output.curve)
    write_parquet(area_table, snakemake.output.areas)
