"""Linear probes for the answer on the residual stream, per layer and position, over all correct prompts."""
import pandas as pd
import torch

from circuitflow.circuits.job import load_model_job
from circuitflow.io import write_parquet
from circuitflow.localization.probing import heuristics_layer, probe_table
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p = snakemake.params
    job = load_model_job(snakemake.input.handle, perf.device, p.dtype, perf.device_map)
    handle, tokenizer, tracer = job.handle, job.tokenizer, job.tracer
    answers = pd.read_parquet(snakemake.input.answers)
    correct = answers[answers["correct"]]
    length = correct["prompt_len"].mode().iloc[0]  # one token length (all of them for number-per-token models)
    correct = correct[correct["prompt_len"] == length]
    tokens = torch.tensor(tokenizer(list(correct["prompt"]))["input_ids"])
    table = probe_table(tracer, tokens, correct["answer"].to_numpy(), p.seed)
    log.info("last-position probe accuracy by layer: %s",
             table[table["position"] == "last"]["accuracy"].round(3).tolist())
    log.info("first heuristics layer (threshold 0.8): %d", heuristics_layer(table))
    with_labels(table, model=handle.name, revision=handle.revision, operator=snakemake.wildcards.op)
    write_parquet(table, snakemake.output.table)
