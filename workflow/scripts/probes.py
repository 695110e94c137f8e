"""Linear probes for the answer on the residual stream, per layer and position, over all correct prompts."""
import torch
import pandas as pd

from circuitflow.circuits import Tracer
from circuitflow.io import write_parquet
from circuitflow.localization.probing import heuristics_layer, probe_table
from circuitflow.logs import log_to
from circuitflow.models import load_bridge, load_tokenizer, read_handle

with log_to(snakemake.log[0]) as log:
    p = snakemake.params
    handle = read_handle(snakemake.input.handle)
    bridge = load_bridge(handle, p.device, p.dtype, p.device_map)
    tokenizer = load_tokenizer(handle)  # the model's own: the bridge's adds a BOS token
    answers = pd.read_parquet(snakemake.input.answers)
    correct = answers[answers["correct"]]
    length = correct["prompt_len"].mode().iloc[0]  # one token length (all of them for number-per-token models)
    correct = correct[correct["prompt_len"] == length]
    tokens = torch.tensor(tokenizer(list(correct["prompt"]))["input_ids"])
    table = probe_table(Tracer(bridge), tokens, correct["answer"].to_numpy(), p.seed)
    log.info("last-position probe accuracy by layer: %s",
             table[table["position"] == "last"]["accuracy"].round(3).tolist())
    log.info("first heuristics layer (threshold 0.8): %d", heuristics_layer(table))
    table.insert(0, "model", handle.name)
    table.insert(1, "revision", handle.revision)
    table.insert(2, "operator", snakemake.wildcards.op)
    write_parquet(table, snakemake.output.table)
