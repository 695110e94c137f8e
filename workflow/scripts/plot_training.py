"""Figure: held-out accuracy per operator during toy-model training."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import accuracy_over_steps, save_figure

with log_to(snakemake.log[0]):
    table = pd.read_parquet(snakemake.input.table)
    title = f"{snakemake.wildcards.model}: held-out accuracy during training"
    save_figure(accuracy_over_steps(table, "heldout_accuracy", title), snakemake.output.png, snakemake.output.pdf)
