"""Attention over the operand grid and OV transitions between numbers for the top heads by IE."""
import pandas as pd

from circuitflow.circuits import Tracer
from circuitflow.io import write_parquet
from circuitflow.localization.attention import attention_grid, ov_transition
from circuitflow.localization.ie_maps import top_heads
from circuitflow.logs import log_to
from circuitflow.models import load_bridge, load_tokenizer, read_handle

with log_to(snakemake.log[0]) as log:
    p, loc, op = snakemake.params, snakemake.params.loc, snakemake.wildcards.op
    handle = read_handle(snakemake.input.handle)
    bridge = load_bridge(handle, p.device, p.dtype, p.device_map)
    tokenizer = load_tokenizer(handle)  # the model's own: the bridge's adds a BOS token
    tracer = Tracer(bridge)
    heads = top_heads(pd.read_parquet(snakemake.input.ie_maps), loc["attention_heads"], position="last")
    log.info("heads analysed: %s", heads)
    grid = attention_grid(tracer, tokenizer, op, p.operand_max, heads)
    numbers = list(range(p.operand_max + 1))
    ids = tokenizer.convert_tokens_to_ids([str(n) for n in numbers])
    ov = [pd.DataFrame(dict(layer=layer, head=head, input_number=[i for i in numbers for _ in numbers],
                            output_number=numbers * len(numbers),
                            value=ov_transition(tracer, layer, head, ids).flatten().numpy()))
          for layer, head in heads]
    columns = ["layer", "head", "input_number", "output_number", "value"]
    ov_table = pd.concat(ov, ignore_index=True) if ov else pd.DataFrame(columns=columns)
    for frame in (grid, ov_table):
        frame.insert(0, "model", handle.name)
        frame.insert(1, "operator", op)
    write_parquet(grid, snakemake.output.table)
    write_parquet(ov_table, snakemake.output.ov)
