"""IE of the final model's most important components across training checkpoints."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import checkpoint_ie, save_figure

with log_to(snakemake.log[0]):
    table = pd.read_parquet(snakemake.input.table)
    fig = checkpoint_ie(table, f"{snakemake.wildcards.model}: IE of the top components across training")
    save_figure(fig, snakemake.output.png, snakemake.output.pdf)
