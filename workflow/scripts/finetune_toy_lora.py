"""Fine-tune a toy checkpoint with a peft LoRA adapter; also export it in the raw safetensors format.

The base is given to peft by its path relative to the working directory, so neither the adapter's config nor its
model card holds this machine's absolute path; the config is rewritten in a stable order (reproducible bytes)."""
import os
from pathlib import Path

import torch

from circuitflow.io import write_parquet
from circuitflow.models.lora import export_raw_lora, stabilize_peft_config
from circuitflow.models.registry import ModelSpec
from circuitflow.models.select import base_handle
from circuitflow.recipes import LoraRecipe, recipe_from_dict
from circuitflow.snakejob import snakemake_job
from circuitflow.tables import with_labels
from circuitflow.toy import finetune_lora

with snakemake_job(snakemake) as log:
    torch.set_num_threads(2)
    spec = ModelSpec(**snakemake.params.spec)
    recipe = recipe_from_dict(LoraRecipe, {"seed": snakemake.params.seed, **spec.adapter["train"]},
                              f"models.{spec.name}.adapter.train")
    base = base_handle(spec, snakemake.input.handle, snakemake.input.checkpoints)
    base_dir = os.path.relpath(base.path)
    adapter = Path(snakemake.output.adapter)
    table = finetune_lora(Path(base_dir), recipe, adapter)
    stabilize_peft_config(adapter, base_dir)
    with_labels(table, model=spec.name, base_revision=base.revision)
    log.info("held-out accuracy before/after:\n%s", table.to_string())
    write_parquet(table, snakemake.output.table)
    scaling = export_raw_lora(adapter, Path(snakemake.output.raw))
    log.info("raw export merges with scaling %s", scaling)
