"""Heuristic neurons of every chosen training checkpoint, compared with the final model's, and their prompt
knockout: when do the heuristics appear, and when does the model start to rely on them?"""
import pandas as pd
import torch

from circuitflow.circuits import Tracer, pair_batches
from circuitflow.heuristics import HeuristicSpec
from circuitflow.heuristics.analysis import classify_top_neurons, compare_to_final, knockouts
from circuitflow.io import cached_frame, file_stamps, resumable_sweep, write_parquet
from circuitflow.localization.neuron_scores import neuron_table
from circuitflow.models import load_bridge, load_tokenizer, read_handles
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import with_labels


def checkpoint_heuristics(handle, ops, spec, p, perf):
    h = p.heur
    tracer = Tracer(load_bridge(handle, perf.device, p.dtype, perf.device_map))
    tokenizer = load_tokenizer(handle)
    parts = []
    for op, d in ops.items():
        batches = pair_batches(d["prompts"], tokenizer, perf.localization_batch_size)
        neurons = neuron_table(tracer, batches, progress=False)
        classified = classify_top_neurons(tracer, tokenizer, d["answers"], neurons, d["layer"],
                                          h["neurons_per_layer"], spec=spec, threshold=h["threshold"],
                                          two_sided=h["two_sided"], null_permutations=0, seed=p.seed,
                                          batch_size=perf.batch_size)
        _, by_prompt = knockouts(tracer, tokenizer, d["answers"], classified, per_layer=h["knockout_neurons_per_layer"],
                                 max_prompts=h["max_prompts"], seed=p.seed)
        by_prompt = by_prompt.rename(columns=dict(accuracy="knockout_accuracy",
                                                  accuracy_random="knockout_accuracy_random"))
        parts.append(with_labels(by_prompt, operator=op, **compare_to_final(classified, d["final"])))
    return with_labels(pd.concat(parts, ignore_index=True), revision=handle.revision, step=handle.step)


with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, h, i = snakemake.params, snakemake.params.heur, snakemake.input
    spec = HeuristicSpec.from_config(h)
    ops = {op: dict(answers=pd.read_parquet(a), prompts=pd.read_parquet(pr), final=pd.read_parquet(f),
                    layer=int(pd.read_parquet(c)["heuristics_layer"].iloc[0]))
           for op, a, pr, f, c in zip(p.operators, i.answers, i.prompts, i.final, i.paper_circuits)}
    wanted = h["checkpoint_steps"]
    tables = []
    with resumable_sweep(p.partial, dict(params=dict(p.items()), inputs=file_stamps(i))) as folder:
        for handle in read_handles(i.index):
            if wanted is not None and handle.step not in wanted:
                continue
            tables.append(cached_frame(folder / f"{handle.revision}.parquet",
                                       lambda handle=handle: checkpoint_heuristics(handle, ops, spec, p, perf)))
            present = tables[-1].drop_duplicates("operator").set_index("operator")["final_matches_present"]
            log.info("%s: share of the final model's heuristic matches present %s", handle.revision,
                     present.round(2).to_dict())
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        write_parquet(with_labels(pd.concat(tables, ignore_index=True), model=snakemake.wildcards.model),
                      snakemake.output.table)
