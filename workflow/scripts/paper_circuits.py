"""The paper's circuits (top heads + neurons) and their faithfulness under per-position mean ablation."""
import pandas as pd

from circuitflow.circuits import pair_batches, token_batches
from circuitflow.circuits.job import load_model_job
from circuitflow.io import write_parquet
from circuitflow.localization.mean_ablation import paper_faithfulness
from circuitflow.logs import clamped
from circuitflow.prompts import all_pair_prompts, prompt_prefix
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import PROMPT_SET_COLUMNS, read_table, with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, loc, i = snakemake.params, snakemake.params.loc, snakemake.input
    job = load_model_job(i.handle, perf.device, p.dtype, perf.device_map)
    a = job.tracer.anatomy
    n_heads = clamped(log, "localization.top_heads", loc["top_heads"], a.n_layers * a.n_heads, job.handle.name, "heads")
    prompts = read_table(i.prompts, PROMPT_SET_COLUMNS)
    batches = pair_batches(prompts, job.tokenizer, perf.localization_batch_size)
    # means over all operand pairs of all operators, legal or not, with the prompt set's own prefix and token length
    texts = all_pair_prompts(p.prompts["operand_max"], prompt_prefix(prompts))
    mean_tokens = token_batches(job.tokenizer, texts, 1024, batches[0].clean.shape[1])
    table = paper_faithfulness(job.tracer, batches, mean_tokens, pd.read_parquet(i.ie_maps),
                               pd.read_parquet(i.neurons), probes=pd.read_parquet(i.probes), n_heads=n_heads,
                               first_layer=loc["heuristics_layer"], probe_threshold=loc["probe_threshold"],
                               ks=loc["neurons_per_layer"], random_seeds=loc["random_seeds"])
    top = table[table["circuit"] == "top"]
    log.info("heads %s, heuristics layer %d; median faithfulness by k: %s", table["heads"].iloc[0],
             table["heuristics_layer"].iloc[0], dict(zip(top["k"], top["faithfulness_median"].round(3))))
    with_labels(table, model=job.handle.name, revision=job.handle.revision, operator=snakemake.wildcards.op)
    write_parquet(table, snakemake.output.table)
