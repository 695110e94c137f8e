"""Dictionary quality of one model: reconstruction, sparsity, and accuracy with dictionaries spliced in."""
import pandas as pd

from circuitflow.features.quality_plots import dictionary_quality_figure
from circuitflow.logs import log_to
from circuitflow.plots import save_figure

with log_to(snakemake.log[0]):
    table = pd.read_parquet(snakemake.input.quality)
    fig = dictionary_quality_figure(table, f"{snakemake.wildcards.model}: sparse dictionaries")
    save_figure(fig, snakemake.output.png, snakemake.output.pdf)
