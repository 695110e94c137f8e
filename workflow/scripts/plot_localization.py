"""The localization figures of one model and operator, from its tables."""
import pandas as pd

from circuitflow.logs import log_to
from circuitflow.plots import OP_LABELS, attention_panels, ie_heatmaps, neuron_panels, probe_curves, save_figure

with log_to(snakemake.log[0]):
    i, o, w = snakemake.input, snakemake.output, snakemake.wildcards
    name = f"{w.model}, {OP_LABELS[w.op]}"
    save_figure(ie_heatmaps(pd.read_parquet(i.ie_maps), f"{name}: IE of patching heads and MLPs"), o.ie_map)
    save_figure(neuron_panels(pd.read_parquet(i.neurons), f"{name}: MLP neurons"), o.neurons)
    save_figure(probe_curves(pd.read_parquet(i.probes), f"{name}: linear probes for the answer"), o.probes)
    save_figure(attention_panels(pd.read_parquet(i.attention), pd.read_parquet(i.ov), f"{name}: top heads"),
                o.attention)
