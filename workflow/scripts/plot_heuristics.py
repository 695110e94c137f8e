"""The heuristics figures of one model and operator, from its tables."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import OP_LABELS, heuristic_maps, heuristic_summary, save_figure

with log_to(snakemake.log[0]):
    i, o, w = snakemake.input, snakemake.output, snakemake.wildcards
    name = f"{w.model}, {OP_LABELS[w.op]}"
    save_figure(heuristic_summary(pd.read_parquet(i.table), pd.read_parquet(i.knockout),
                                  pd.read_parquet(i.prompt_knockout), f"{name}: heuristic neurons"), o.summary)
    save_figure(heuristic_maps(pd.read_parquet(i.maps), f"{name}: activation of top neurons over the operand grid"),
                o.maps)
