"""The paper's circuits (top heads + neurons) and their faithfulness under per-position mean ablation."""
import pandas as pd
import torch

from circuitflow.arithmetic import OPERATORS, prompt_text
from circuitflow.circuits import Tracer, pair_batches, token_batches
from circuitflow.io import write_parquet
from circuitflow.localization.ie_maps import top_heads
from circuitflow.localization.mean_ablation import faithfulness_table, paper_circuits, site_means
from circuitflow.localization.probing import heuristics_layer
from circuitflow.logs import log_to
from circuitflow.models import load_bridge, load_tokenizer, read_handle
from circuitflow.prompts import PromptConfig, few_shot_prefix

with log_to(snakemake.log[0]) as log:
    p, loc = snakemake.params, snakemake.params.loc
    handle = read_handle(snakemake.input.handle)
    bridge = load_bridge(handle, p.device, p.dtype, p.device_map)
    tokenizer = load_tokenizer(handle)  # the model's own: the bridge's adds a BOS token
    tracer = Tracer(bridge)
    a = tracer.anatomy
    batches = pair_batches(pd.read_parquet(snakemake.input.prompts), tokenizer, loc["batch_size"])
    length = batches[0].clean.shape[1]
    # means over all operand pairs of all operators, legal or not, with the prompts' own prefix and token length
    cfg = PromptConfig(**{"seed": 0, **p.prompts})
    texts = [few_shot_prefix(op, cfg, cfg.operand_max) + prompt_text(op, x, y) for op in OPERATORS
             for x in range(cfg.operand_max + 1) for y in range(cfg.operand_max + 1)]
    z_mean, post_mean = site_means(tracer, token_batches(tokenizer, texts, 1024, length))
    heads = top_heads(pd.read_parquet(snakemake.input.ie_maps), loc["top_heads"])
    probes = pd.read_parquet(snakemake.input.probes)
    first = loc["heuristics_layer"]
    if first is None:
        first = heuristics_layer(probes, loc["probe_threshold"])
    first = min(first, a.n_layers - 1)
    neurons = pd.read_parquet(snakemake.input.neurons)
    importance = torch.tensor(neurons.sort_values(["layer", "neuron"])["importance"].to_numpy()).view(a.n_layers, -1)
    rank = importance.argsort(dim=1, descending=True)
    ks = sorted({k for k in loc["neurons_per_layer"] if k < a.d_mlp} | {a.d_mlp})
    head_keep, neuron_keep, labels = paper_circuits(a.n_layers, a.n_heads, a.d_mlp, heads, first, rank, ks,
                                                    loc["random_seeds"])
    table = faithfulness_table(tracer, batches, z_mean, post_mean, head_keep, neuron_keep, labels)
    top = table[table["circuit"] == "top"]
    log.info("heads %s, heuristics layer %d; faithfulness by k: %s", heads, first,
             dict(zip(top["k"], top["faithfulness"].round(3))))
    table["heads"] = ", ".join(f"L{layer}H{head}" for layer, head in heads)
    table["heuristics_layer"] = first
    table.insert(0, "model", handle.name)
    table.insert(1, "revision", handle.revision)
    table.insert(2, "operator", snakemake.wildcards.op)
    write_parquet(table, snakemake.output.table)
