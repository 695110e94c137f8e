"""Run the configured feature interventions (features.interventions) on every operator's prompt set: the metric and
the chosen heads' attention patterns without and with all of them at once, and LEAP grab-and-delete per feature."""
from pathlib import Path

from circuitflow.circuits.job import load_model_job
from circuitflow.features.dictionary import load_dictionaries
from circuitflow.features.interventions import empty_intervention_tables, run_configured_interventions
from circuitflow.io import write_parquet
from circuitflow.models import read_handle
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import PROMPT_SET_COLUMNS, read_table, with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, i, o = snakemake.params, snakemake.input, snakemake.output
    if p.interventions:
        job = load_model_job(i.handle, perf.device, p.dtype, perf.device_map)
        handle = job.handle
        dictionaries = load_dictionaries(i.dictionaries, perf.device)
        prompts = {Path(path).stem: read_table(path, PROMPT_SET_COLUMNS) for path in i.prompts}
        effects, patterns = run_configured_interventions(job.bridge, dictionaries, prompts, p.interventions, p.heads,
                                                         p.metric, job.tokenizer, perf.batch_size)
        means = effects.groupby(["operator", "label", "quantity"], sort=False)["change"].mean()
        log.info("mean change per operator, intervention and quantity (%s):\n%s", p.metric, means.to_string())
    else:
        log.info("no feature interventions configured (features.interventions is empty): writing empty tables")
        handle = read_handle(i.handle)
        effects, patterns = empty_intervention_tables()
    labels = dict(model=handle.name, revision=handle.revision)
    write_parquet(with_labels(effects, **labels), o.effects)
    write_parquet(with_labels(patterns, **labels), o.patterns)
