"""IE maps of one model and operator, one counterfactual seed at a time (finished seeds survive an interruption)."""
import pandas as pd

from circuitflow.circuits.job import load_model_job
from circuitflow.io import cached_frame, file_stamps, resumable_sweep, write_parquet
from circuitflow.localization.ie_maps import counterfactual_pool, ie_map
from circuitflow.logs import log_to
from circuitflow.tables import with_labels

with log_to(snakemake.log[0]) as log:
    p, loc = snakemake.params, snakemake.params.loc
    job = load_model_job(snakemake.input.handle, p.device, p.dtype, p.device_map)
    handle, tokenizer, tracer = job.handle, job.tokenizer, job.tracer
    prompts = pd.read_parquet(snakemake.input.prompts)
    pool = counterfactual_pool(snakemake.input.answers)
    parts = []
    with resumable_sweep(p.partial, dict(params=dict(p.items()), inputs=file_stamps(snakemake.input))) as folder:
        for seed in loc["seeds"]:
            parts.append(cached_frame(folder / f"seed{seed}.parquet",
                                      lambda: ie_map(tracer, tokenizer, prompts, pool, [seed], loc["batch_size"])))
            log.info("seed %d done", seed)
        table = pd.concat(parts, ignore_index=True)
        with_labels(table, model=handle.name, revision=handle.revision, operator=snakemake.wildcards.op)
        write_parquet(table, snakemake.output.table)
