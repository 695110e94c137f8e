"""Attention over the operand grid and OV transitions between numbers for the top heads by IE."""
import pandas as pd

from circuitflow.circuits.job import load_model_job
from circuitflow.io import write_parquet
from circuitflow.localization.attention import attention_grid, ov_table
from circuitflow.localization.ie_maps import top_heads
from circuitflow.logs import clamped
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, loc, op = snakemake.params, snakemake.params.loc, snakemake.wildcards.op
    job = load_model_job(snakemake.input.handle, perf.device, p.dtype, perf.device_map)
    handle, tokenizer, tracer = job.handle, job.tokenizer, job.tracer
    n_heads = clamped(log, "localization.attention_heads", loc["attention_heads"],
                      tracer.anatomy.n_layers * tracer.anatomy.n_heads, handle.name, "heads")
    heads = top_heads(pd.read_parquet(snakemake.input.ie_maps), n_heads, position="last")
    log.info("heads analysed: %s", heads)
    grid = attention_grid(tracer, tokenizer, op, p.operand_max, heads)
    ov = ov_table(tracer, tokenizer, heads, p.operand_max)
    write_parquet(with_labels(grid, model=handle.name, revision=handle.revision, operator=op), snakemake.output.table)
    write_parquet(with_labels(ov, model=handle.name, revision=handle.revision, operator=op), snakemake.output.ov)
