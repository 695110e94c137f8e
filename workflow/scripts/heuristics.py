"""Classify the important neurons of one model and operator into heuristics, and knock them out."""
import pandas as pd

from circuitflow.circuits.job import load_model_job
from circuitflow.heuristics import HeuristicSpec
from circuitflow.heuristics.analysis import analyse_heuristics
from circuitflow.io import write_parquet
from circuitflow.logs import clamped
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, h, i, o = snakemake.params, snakemake.params.heur, snakemake.input, snakemake.output
    job = load_model_job(i.handle, perf.device, p.dtype, perf.device_map)
    per_layer = clamped(log, "heuristics.neurons_per_layer", h["neurons_per_layer"], job.tracer.anatomy.d_mlp,
                        job.handle.name, "neurons per layer")
    first_layer = int(pd.read_parquet(i.paper_circuits)["heuristics_layer"].iloc[0])
    spec = HeuristicSpec.from_config(h)
    result = analyse_heuristics(
        job.tracer, job.tokenizer, pd.read_parquet(i.answers), pd.read_parquet(i.neurons), first_layer,
        per_layer, spec=spec, threshold=h["threshold"], two_sided=h["two_sided"],
        null_permutations=h["null_permutations"],
        min_neurons=h["knockout_min_neurons"], max_prompts=h["max_prompts"],
        knockout_per_layer=h["knockout_neurons_per_layer"], map_neurons=h["map_neurons"], seed=p.seed,
        batch_size=perf.batch_size)
    matched = result.classification[result.classification["matched"]]
    log.info("heuristics layer %d: %d of %d classified neurons implement a heuristic; by family: %s", first_layer,
             matched[["layer", "neuron"]].drop_duplicates().shape[0],
             result.classification[["layer", "neuron"]].drop_duplicates().shape[0],
             matched.groupby("family").size().to_dict())
    log.info("prompt knockout (accuracy, random control): %s",
             result.prompt_knockout[["neurons_per_layer", "accuracy", "accuracy_random"]].to_dict("records"))
    labels = dict(model=job.handle.name, revision=job.handle.revision, operator=snakemake.wildcards.op,
                  heuristics_layer=first_layer)
    frames = dict(table=result.classification, knockout=result.heuristic_knockout,
                  prompt_knockout=result.prompt_knockout, maps=result.maps)
    for key, frame in frames.items():
        write_parquet(with_labels(frame, **labels), o[key])
