"""Accuracy per operator of one model, from its per-prompt answers."""
import pandas as pd

from circuitflow.io import write_parquet
from circuitflow.snakejob import snakemake_job
from circuitflow.tables import accuracy_table, concat

with snakemake_job(snakemake) as log:
    frames = [pd.read_parquet(path) for path in snakemake.input.answers]
    table = concat(accuracy_table(f, model=f["model"].iloc[0], revision=f["revision"].iloc[0]) for f in frames)
    log.info("\n%s", table.to_string())
    write_parquet(table, snakemake.output.table)
