"""Faithfulness curves of one model and operator: one panel per circuit level, one line per method."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import OP_LABELS, faithfulness_curves, save_figure

with log_to(snakemake.log[0]):
    curve = pd.read_parquet(snakemake.input.curve)
    w = snakemake.wildcards
    fig = faithfulness_curves(curve, f"{w.model}: circuits for {OP_LABELS[w.op]} ({curve['metric_name'].iloc[0]})")
    save_figure(fig, snakemake.output.png, snakemake.output.pdf)
