"""IE maps of every training checkpoint on the final model's prompt sets (one seed): how the circuit forms."""
from pathlib import Path

import pandas as pd
import torch

from circuitflow.circuits import Tracer
from circuitflow.io import cached_frame, write_parquet
from circuitflow.localization.ie_maps import counterfactual_pool, ie_map
from circuitflow.logs import log_to
from circuitflow.models import load_bridge, load_tokenizer, read_handles
from circuitflow.tables import with_labels

with log_to(snakemake.log[0]) as log:
    p, loc = snakemake.params, snakemake.params.loc
    pool = counterfactual_pool(snakemake.input.answers)
    prompt_sets = {op: pd.read_parquet(path) for op, path in zip(p.operators, snakemake.input.prompts)}
    tables = []
    for handle in read_handles(snakemake.input.index):

        def compute(handle=handle):
            tracer = Tracer(load_bridge(handle, p.device, p.dtype, p.device_map))
            tokenizer = load_tokenizer(handle)
            parts = []
            for op, prompts in prompt_sets.items():
                part = ie_map(tracer, tokenizer, prompts, pool, loc["seeds"][:1], loc["batch_size"], progress=False)
                parts.append(with_labels(part, operator=op))
            return with_labels(pd.concat(parts, ignore_index=True), revision=handle.revision, step=handle.step)

        tables.append(cached_frame(Path(p.partial) / f"{handle.revision}.parquet", compute))
        log.info("%s done", handle.revision)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    write_parquet(with_labels(pd.concat(tables, ignore_index=True), model=snakemake.wildcards.model),
                  snakemake.output.table)
