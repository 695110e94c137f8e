"""Figure: accuracy per operator and model."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import accuracy_bars, save_figure
from circuitflow.tables import concat

with log_to(snakemake.log[0]):
    table = concat(pd.read_parquet(path) for path in snakemake.input.tables)
    save_figure(accuracy_bars(table), snakemake.output.png, snakemake.output.pdf)
