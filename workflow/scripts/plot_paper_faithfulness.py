"""Faithfulness of the paper's circuits against neurons per layer, one line per operator."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import paper_faithfulness, save_figure

with log_to(snakemake.log[0]):
    table = pd.concat([pd.read_parquet(path) for path in snakemake.input.tables], ignore_index=True)
    fig = paper_faithfulness(table, f"{snakemake.wildcards.model}: the paper's circuits under mean ablation")
    save_figure(fig, snakemake.output.png, snakemake.output.pdf)
