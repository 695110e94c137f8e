"""Feature-circuit faithfulness of one model and operator (one line per attribution graph) and each feature's
linear attribution against the exact effect of ablating it."""
import pandas as pd

from circuitflow.features.graph_plots import plot_feature_faithfulness
from circuitflow.plots import OP_LABELS, save_figure
from circuitflow.snakejob import snakemake_job

with snakemake_job(snakemake):
    w = snakemake.wildcards
    curve = pd.read_parquet(snakemake.input.faithfulness)
    ablation = pd.read_parquet(snakemake.input.ablation)
    fig = plot_feature_faithfulness(curve, ablation, f"{w.model}: feature circuits for {OP_LABELS[w.op]}")
    save_figure(fig, snakemake.output.png, snakemake.output.pdf)
