"""Neuron importance (attribution patching, IE metric, last position) and exact effects for chosen layers."""
import pandas as pd

from circuitflow.circuits import pair_batches
from circuitflow.circuits.job import load_model_job
from circuitflow.io import write_parquet
from circuitflow.localization.neuron_scores import neuron_table
from circuitflow.logs import log_to
from circuitflow.tables import with_labels

with log_to(snakemake.log[0]) as log:
    p, loc = snakemake.params, snakemake.params.loc
    job = load_model_job(snakemake.input.handle, p.device, p.dtype, p.device_map)
    handle, tokenizer, tracer = job.handle, job.tokenizer, job.tracer
    batches = pair_batches(pd.read_parquet(snakemake.input.prompts), tokenizer, loc["batch_size"])
    table = neuron_table(tracer, batches, loc["exact_neuron_layers"])
    for layer, rows in table.dropna(subset=["exact_ie"]).groupby("layer"):
        log.info("layer %d: exact vs attribution: Pearson %.3f, Spearman %.3f", layer,
                 rows["exact_ie"].corr(rows["attribution_mean"]),
                 rows["exact_ie"].rank().corr(rows["attribution_mean"].rank()))
    with_labels(table, model=handle.name, revision=handle.revision, operator=snakemake.wildcards.op)
    write_parquet(table, snakemake.output.table)
