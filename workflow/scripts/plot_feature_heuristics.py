"""The heuristics-as-features figures of one model and operator, from its tables: features against neurons, and
the top features' activation maps."""
import pandas as pd

from circuitflow.features.heuristic_plots import feature_heuristic_summary, feature_maps
from circuitflow.logs import log_to
from circuitflow.plots import OP_LABELS, save_figure

with log_to(snakemake.log[0]):
    i, o, w = snakemake.input, snakemake.output, snakemake.wildcards
    name = f"{w.model}, {OP_LABELS[w.op]}"
    save_figure(feature_heuristic_summary(pd.read_parquet(i.comparison), pd.read_parquet(i.splits),
                                          pd.read_parquet(i.knockout), f"{name}: heuristics as features vs neurons"),
                o.summary)
    save_figure(feature_maps(pd.read_parquet(i.maps), f"{name}: activation of top features over the operand grid"),
                o.maps)
