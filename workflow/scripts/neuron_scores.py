"""Neuron importance (attribution patching, IE metric, last position) and exact effects for chosen layers."""
import pandas as pd

from circuitflow.circuits import Tracer, pair_batches
from circuitflow.io import write_parquet
from circuitflow.localization.neuron_scores import neuron_table
from circuitflow.logs import log_to
from circuitflow.models import load_bridge, load_tokenizer, read_handle

with log_to(snakemake.log[0]) as log:
    p, loc = snakemake.params, snakemake.params.loc
    handle = read_handle(snakemake.input.handle)
    bridge = load_bridge(handle, p.device, p.dtype, p.device_map)
    tokenizer = load_tokenizer(handle)  # the model's own: the bridge's adds a BOS token
    batches = pair_batches(pd.read_parquet(snakemake.input.prompts), tokenizer, loc["batch_size"])
    table = neuron_table(Tracer(bridge), batches, loc["exact_neuron_layers"])
    for layer, rows in table.dropna(subset=["exact_ie"]).groupby("layer"):
        log.info("layer %d: exact vs attribution: Pearson %.3f, Spearman %.3f", layer,
                 rows["exact_ie"].corr(rows["attribution_mean"]),
                 rows["exact_ie"].rank().corr(rows["attribution_mean"].rank()))
    table.insert(0, "model", handle.name)
    table.insert(1, "revision", handle.revision)
    table.insert(2, "operator", snakemake.wildcards.op)
    write_parquet(table, snakemake.output.table)
