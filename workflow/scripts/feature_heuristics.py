"""Heuristics as features for one model and operator: classify the most important features of every dictionary
(transcoders and attention SAEs) into heuristics, and compare them with the heuristic neurons of the heuristics rule
(share implementing a heuristic, features per heuristic neuron, knockout specificity)."""
import numpy as np
import pandas as pd

from circuitflow.circuits.job import load_model_job
from circuitflow.features.dictionary import load_dictionaries
from circuitflow.features.heuristic_features import CLASSIFICATION_COLUMNS, analyse_features
from circuitflow.heuristics import HeuristicSpec
from circuitflow.io import write_parquet
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import read_table, with_labels

ANSWER_COLUMNS = ["op1", "op2", "answer", "answer_token", "prompt", "correct"]


def median(values: pd.Series) -> str:
    return f"{np.nanmedian(values):.2f}" if values.notna().any() else "none"


with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, i, o = snakemake.params, snakemake.input, snakemake.output
    f, h = p.features, p.heur
    job = load_model_job(i.handle, perf.device, p.dtype, perf.device_map)
    dictionaries = list(load_dictionaries(i.dictionaries, perf.device).values())
    log.info("classifying the top %d features of each dictionary: %s", f["features_per_dictionary"],
             ", ".join(f"{d.info.name} ({'transcoder' if d.info.site == 'mlp' else 'attention SAE'})"
                       for d in dictionaries))
    result = analyse_features(
        job.bridge, job.tokenizer, read_table(i.answers, ANSWER_COLUMNS), dictionaries,
        read_table(i.neurons, CLASSIFICATION_COLUMNS + ["importance", "rank"]), top_n=f["features_per_dictionary"],
        spec=HeuristicSpec.from_config(h), threshold=h["threshold"], two_sided=h["two_sided"],
        null_permutations=h["null_permutations"], min_units=f["knockout_min_units"], max_prompts=h["max_prompts"],
        map_features=h["map_neurons"], seed=p.seed, batch_size=perf.batch_size)
    for row in result.comparison.itertuples(index=False):
        log.info("%s: %d of %d important features implement a heuristic (%.2f); neurons: %d of %d (%.2f)", row.site,
                 row.n_heuristic_features, row.n_features, row.share_features, row.n_heuristic_neurons,
                 row.n_neurons, row.share_neurons)
    splits, knockout = result.splits, result.knockout
    log.info("features per heuristic neuron, median over %d neurons: %s with one of its heuristics, %s with decoder "
             "cosine >= 0.5", len(splits), median(splits["n_features_same_heuristic"]),
             median(splits["n_features_cosine"]))
    log.info("knockout of %d heuristics shared by >= %d features and >= %d neurons, median specificity (accuracy "
             "drop on its prompts - on others): features %s, neurons %s", len(knockout), f["knockout_min_units"],
             f["knockout_min_units"], median(knockout["specificity_features"]),
             median(knockout["specificity_neurons"]))
    labels = dict(model=job.handle.name, revision=job.handle.revision, operator=snakemake.wildcards.op)
    for key in ("table", "maps", "comparison", "splits", "knockout"):
        write_parquet(with_labels(getattr(result, key), **labels), o[key])
