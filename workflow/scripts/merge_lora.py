"""Merge a LoRA adapter into its base model and write a plain Hugging Face directory."""
from pathlib import Path

from circuitflow.models.registry import ModelSpec
from circuitflow.models import ModelHandle, load_hf_model, load_tokenizer, write_handle
from circuitflow.io import atomic_dir, write_json
from circuitflow.models.lora import merge_adapter
from circuitflow.models.select import base_handle
from circuitflow.snakejob import snakemake_job

with snakemake_job(snakemake, torch_threads=True) as log:
    spec = ModelSpec(**snakemake.params.spec)
    base = base_handle(spec, snakemake.input.handle, snakemake.input.checkpoints)
    model = load_hf_model(base, device="cpu", dtype="float32")
    merged = merge_adapter(model, Path(snakemake.input.adapter), spec.adapter.get("scaling"),
                           spec.adapter.get("extra_scaling"))
    with atomic_dir(snakemake.output.merged) as tmp:
        merged.save_pretrained(tmp)
        load_tokenizer(base).save_pretrained(tmp)
    provenance = {"base": base.__dict__, "adapter": spec.adapter}
    log.info("merged %s into %s@%s", snakemake.input.adapter, base.name, base.revision)
    revision = f"{base.revision or 'main'}+lora"
    write_handle(ModelHandle(spec.name, str(Path(snakemake.output.merged).resolve()), revision, "lora", provenance),
                 snakemake.output.handle)
    write_json([], snakemake.output.index)
