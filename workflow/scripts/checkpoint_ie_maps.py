"""IE maps of every training checkpoint on the final model's prompt sets (one seed): how the circuit forms."""
import pandas as pd
import torch

from circuitflow.circuits import Tracer
from circuitflow.io import cached_frame, file_stamps, resumable_sweep, write_parquet
from circuitflow.localization.ie_maps import counterfactual_pool, ie_map
from circuitflow.models import load_bridge, load_tokenizer, read_handles
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import PROMPT_SET_COLUMNS, read_table, with_labels


def checkpoint_maps(handle, prompt_sets, pool, p, perf):
    tracer = Tracer(load_bridge(handle, perf.device, p.dtype, perf.device_map))
    tokenizer = load_tokenizer(handle)
    parts = [with_labels(ie_map(tracer, tokenizer, prompts, pool, p.loc["seeds"][:1],
                                batch_size=perf.localization_batch_size, progress=False), operator=op)
             for op, prompts in prompt_sets.items()]
    return with_labels(pd.concat(parts, ignore_index=True), revision=handle.revision, step=handle.step)


with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p = snakemake.params
    pool = counterfactual_pool(snakemake.input.answers)
    prompt_sets = {op: read_table(path, PROMPT_SET_COLUMNS)
                   for op, path in zip(p.operators, snakemake.input.prompts)}
    tables = []
    with resumable_sweep(p.partial, dict(params=dict(p.items()), inputs=file_stamps(snakemake.input))) as folder:
        for handle in read_handles(snakemake.input.index):
            tables.append(cached_frame(folder / f"{handle.revision}.parquet",
                                       lambda handle=handle: checkpoint_maps(handle, prompt_sets, pool, p, perf)))
            log.info("%s done", handle.revision)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        write_parquet(with_labels(pd.concat(tables, ignore_index=True), model=snakemake.wildcards.model),
                      snakemake.output.table)
