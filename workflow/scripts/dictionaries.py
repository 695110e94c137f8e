"""Train (or load) one model's sparse dictionaries on every legal prompt of the configured operators, and measure
their quality: reconstruction, sparsity, and the model's accuracy with each (and all) spliced in."""
from pathlib import Path

from circuitflow.circuits.job import load_model_job
from circuitflow.features.dictionary import save_dictionaries
from circuitflow.features.stage import build_dictionaries, operator_tokens
from circuitflow.features.quality import quality_table
from circuitflow.io import atomic_dir, write_parquet
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import read_table, with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, i, o = snakemake.params, snakemake.input, snakemake.output
    job = load_model_job(i.handle, perf.device, p.dtype, perf.device_map)
    answers = {Path(path).stem: read_table(path, ["prompt", "prompt_len", "answer_token"]) for path in i.answers}
    tokens, answer_ids = operator_tokens(job.tokenizer, answers)
    dictionaries, pooled = build_dictionaries(job.bridge, tokens, p.dictionaries, p.seed, perf.batch_size)
    table = quality_table(job.bridge, tokens, answer_ids, dictionaries, pooled, batch_size=perf.batch_size)
    for row in table[table["operator"] == "all"].itertuples():
        log.info("%s: normalized MSE %.4f, explained variance %.3f, L0 %.1f, dead %.3f, dense %.3f", row.dictionary,
                 row.nmse, row.explained_variance, row.l0, row.dead_fraction, row.dense_fraction)
    spliced = table[table["dictionary"] == "all"]
    log.info("accuracy with every dictionary spliced in (original): %s", {
        r.operator: f"{r.accuracy:.3f} ({r.accuracy_original:.3f})" for r in spliced.itertuples()})
    with atomic_dir(o.dictionaries) as folder:
        save_dictionaries(dictionaries, folder)
    write_parquet(with_labels(table, model=job.handle.name, revision=job.handle.revision), o.quality)
