"""Accuracy per operator of one model, from its per-prompt answers."""
import pandas as pd

from circuitflow.io import write_parquet
from circuitflow.logs import log_to
from circuitflow.tables import accuracy_table, concat

with log_to(snakemake.log[0]) as log:
    frames = [pd.read_parquet(path) for path in snakemake.input.answers]
    table = concat(accuracy_table(f, model=f["model"].iloc[0], revision=f["revision"].iloc[0]) for f in frames)
    log.info("\n%s", table.to_string())
    write_parquet(table, snakemake.output.table)
