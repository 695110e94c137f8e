"""IE maps of every training checkpoint on the final model's prompt sets (one seed): how the circuit forms."""
import json
from pathlib import Path

import pandas as pd
import torch

from circuitflow.circuits import Tracer
from circuitflow.io import cached_frame, write_parquet
from circuitflow.localization.ie_maps import ie_map
from circuitflow.logs import log_to
from circuitflow.models import ModelHandle, load_bridge, load_tokenizer

with log_to(snakemake.log[0]) as log:
    p, loc = snakemake.params, snakemake.params.loc
    answers = pd.concat([pd.read_parquet(path) for path in snakemake.input.answers])
    pool = answers[answers["correct"]]
    prompt_sets = {op: pd.read_parquet(path) for op, path in zip(p.operators, snakemake.input.prompts)}
    tables = []
    for entry in json.loads(Path(snakemake.input.index).read_text()):
        handle = ModelHandle(**entry)
        step = int(handle.revision.removeprefix("step")) if handle.revision.startswith("step") else -1

        def compute(handle=handle, step=step):
            tracer = Tracer(load_bridge(handle, p.device, p.dtype, p.device_map))
            tokenizer = load_tokenizer(handle)
            parts = []
            for op, prompts in prompt_sets.items():
                part = ie_map(tracer, tokenizer, prompts, pool, loc["seeds"][:1], loc["batch_size"], progress=False)
                part.insert(0, "operator", op)
                parts.append(part)
            frame = pd.concat(parts, ignore_index=True)
            frame.insert(0, "revision", handle.revision)
            frame.insert(1, "step", step)
            return frame

        tables.append(cached_frame(Path(p.partial) / f"{handle.revision}.parquet", compute))
        log.info("%s done", handle.revision)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, "model", snakemake.wildcards.model)
    write_parquet(table, snakemake.output.table)
