"""Heuristic neurons across training checkpoints, from the checkpoint_heuristics table."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import checkpoint_heuristics, save_figure

with log_to(snakemake.log[0]):
    save_figure(checkpoint_heuristics(pd.read_parquet(snakemake.input.table),
                                      f"{snakemake.wildcards.model}: heuristic neurons across training"),
                snakemake.output.png, snakemake.output.pdf)
