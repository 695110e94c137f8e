"""IE maps of one model and operator, one counterfactual seed at a time (finished seeds survive an interruption)."""
import shutil
from pathlib import Path

import pandas as pd

from circuitflow.circuits import Tracer
from circuitflow.io import cached_frame, write_parquet
from circuitflow.localization.ie_maps import ie_map
from circuitflow.logs import log_to
from circuitflow.models import load_bridge, load_tokenizer, read_handle

with log_to(snakemake.log[0]) as log:
    p, loc = snakemake.params, snakemake.params.loc
    handle = read_handle(snakemake.input.handle)
    tracer = Tracer(load_bridge(handle, p.device, p.dtype, p.device_map))
    tokenizer = load_tokenizer(handle)  # the model's own: the bridge's adds a BOS token
    prompts = pd.read_parquet(snakemake.input.prompts)
    answers = pd.concat([pd.read_parquet(path) for path in snakemake.input.answers])
    pool = answers[answers["correct"]]  # counterfactuals: correct prompts of every operator
    parts = []
    for seed in loc["seeds"]:
        parts.append(cached_frame(Path(p.partial) / f"seed{seed}.parquet",
                                  lambda: ie_map(tracer, tokenizer, prompts, pool, [seed], loc["batch_size"])))
        log.info("seed %d done", seed)
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "model", handle.name)
    table.insert(1, "revision", handle.revision)
    table.insert(2, "operator", snakemake.wildcards.op)
    write_parquet(table, snakemake.output.table)
    shutil.rmtree(p.partial, ignore_errors=True)
