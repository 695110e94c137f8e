"""Figure: accuracy per operator across training checkpoints."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import accuracy_over_steps, save_figure

with log_to(snakemake.log[0]):
    table = pd.read_parquet(snakemake.input.table)
    title = f"{table['model'].iloc[0]}: accuracy on all legal prompts across checkpoints"
    save_figure(accuracy_over_steps(table, "accuracy", title), snakemake.output.png, snakemake.output.pdf)
