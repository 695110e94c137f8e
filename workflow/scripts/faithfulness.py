"""Faithfulness of each method's circuits over the configured circuit sizes, and MIB's CPR/CMD areas."""
import pandas as pd

from circuitflow.circuits import Graph, Tracer, area_scores, faithfulness_curve, pair_batches
from circuitflow.io import write_parquet
from circuitflow.logs import log_to
from circuitflow.metrics import get_metric
from circuitflow.models import load_bridge, read_handle

with log_to(snakemake.log[0]) as log:
    p, c = snakemake.params, snakemake.params.circuits
    handle = read_handle(snakemake.input.handle)
    bridge = load_bridge(handle, p.device, p.dtype, p.device_map)
    batches = pair_batches(pd.read_parquet(snakemake.input.prompts), bridge.tokenizer, c["batch_size"])
    tracer = Tracer(bridge)
    curves, areas = [], []
    for method, path in zip(c["methods"], snakemake.input.graphs):
        curve = faithfulness_curve(bridge, Graph.load(path), batches, get_metric(c["metric"]), c["intervention"],
                                   c["fractions"], c["selection"], c["absolute"], tracer=tracer)
        curve.insert(0, "method", method)
        curves.append(curve)
        areas.append(dict(method=method, **area_scores(curve), selection=c["selection"], absolute=c["absolute"]))
        log.info("%s: CPR %.3f, CMD %.3f", method, areas[-1]["cpr"], areas[-1]["cmd"])
    for frame in (table := pd.concat(curves, ignore_index=True), area_table := pd.DataFrame(areas)):
        frame.insert(0, "model", handle.name)
        frame.insert(1, "revision", handle.revision)
        frame.insert(2, "operator", snakemake.wildcards.op)
        frame["metric_name"] = c["metric"]
    write_parquet(table, snakemake.output.curve)
    write_parquet(area_table, snakemake.output.areas)
