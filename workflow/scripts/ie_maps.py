"""IE maps of one model and operator, one counterfactual seed at a time (finished seeds survive an interruption)."""
import pandas as pd

from circuitflow.circuits.job import load_model_job
from circuitflow.io import cached_frame, file_stamps, resumable_sweep, write_parquet
from circuitflow.localization.ie_maps import counterfactual_pool, ie_map
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import PROMPT_SET_COLUMNS, read_table, with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, loc = snakemake.params, snakemake.params.loc
    job = load_model_job(snakemake.input.handle, perf.device, p.dtype, perf.device_map)
    handle, tokenizer, tracer = job.handle, job.tokenizer, job.tracer
    prompts = read_table(snakemake.input.prompts, PROMPT_SET_COLUMNS)
    pool = counterfactual_pool(snakemake.input.answers)
    parts = []
    with resumable_sweep(p.partial, dict(params=dict(p.items()), inputs=file_stamps(snakemake.input))) as folder:
        for seed in loc["seeds"]:
            parts.append(cached_frame(folder / f"seed{seed}.parquet",
                                      lambda: ie_map(tracer, tokenizer, prompts, pool, [seed],
                                                     batch_size=perf.localization_batch_size)))
            log.info("seed %d done", seed)
        table = pd.concat(parts, ignore_index=True)
        with_labels(table, model=handle.name, revision=handle.revision, operator=snakemake.wildcards.op)
        write_parquet(table, snakemake.output.table)
