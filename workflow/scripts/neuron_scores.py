"""Neuron importance (attribution patching, IE metric, last position) and exact effects for chosen layers."""

from circuitflow.circuits import pair_batches
from circuitflow.circuits.job import load_model_job
from circuitflow.io import write_parquet
from circuitflow.localization.neuron_scores import neuron_table
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import PROMPT_SET_COLUMNS, read_table, with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, loc = snakemake.params, snakemake.params.loc
    job = load_model_job(snakemake.input.handle, perf.device, p.dtype, perf.device_map)
    handle, tokenizer, tracer = job.handle, job.tokenizer, job.tracer
    prompts = read_table(snakemake.input.prompts, PROMPT_SET_COLUMNS)
    batches = pair_batches(prompts, tokenizer, perf.localization_batch_size)
    table = neuron_table(tracer, batches, loc["exact_neuron_layers"])
    for layer, rows in table.dropna(subset=["exact_ie"]).groupby("layer"):
        log.info("layer %d: exact vs attribution: Pearson %.3f, Spearman %.3f", layer,
                 rows["exact_ie"].corr(rows["attribution_mean"]),
                 rows["exact_ie"].rank().corr(rows["attribution_mean"].rank()))
    with_labels(table, model=handle.name, revision=handle.revision, operator=snakemake.wildcards.op)
    write_parquet(table, snakemake.output.table)
