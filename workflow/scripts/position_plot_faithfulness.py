"""Faithfulness of the position-aware circuits of one model and operator against their size, per level."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import OP_LABELS, save_figure
from circuitflow.position_plots import position_faithfulness

with log_to(snakemake.log[0]):
    curve = pd.read_parquet(snakemake.input.curve)
    w = snakemake.wildcards
    title = f"{w.model}: position-aware circuits for {OP_LABELS[w.op]} ({curve['metric_name'].iloc[0]})"
    save_figure(position_faithfulness(curve, title), snakemake.output.png, snakemake.output.pdf)
