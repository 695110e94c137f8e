"""Merge a LoRA adapter into its base model and write a plain Hugging Face directory."""
from pathlib import Path

from circuitflow.models.registry import ModelSpec
from circuitflow.models import ModelHandle, load_hf_model, load_tokenizer
from circuitflow.io import atomic_dir
from circuitflow.models.digest import adapter_digest
from circuitflow.models.handle import stored_handle, write_handle, write_handles
from circuitflow.models.lora import merge_adapter
from circuitflow.models.select import base_handle
from circuitflow.snakejob import snakemake_job

with snakemake_job(snakemake, torch_threads=True) as log:
    spec = ModelSpec(**snakemake.params.spec)
    adapter_digest(Path(snakemake.input.adapter))  # a broken or non-finite adapter: one line naming file and tensor
    base = base_handle(spec, snakemake.input.handle, snakemake.input.checkpoints)
    model = load_hf_model(base, device="cpu", dtype="float32")
    merged = merge_adapter(model, Path(snakemake.input.adapter), spec.adapter.get("scaling"),
                           spec.adapter.get("extra_scaling"))
    with atomic_dir(snakemake.output.merged) as tmp:
        merged.save_pretrained(tmp)
        load_tokenizer(base).save_pretrained(tmp)
    provenance = {"base": stored_handle(base, snakemake.output.handle), "adapter": spec.adapter}
    log.info("merged %s into %s@%s", snakemake.input.adapter, base.name, base.revision)
    revision = f"{base.revision or 'main'}+lora"
    write_handle(ModelHandle(spec.name, snakemake.output.merged, revision, "lora", provenance), snakemake.output.handle)
    write_handles([], snakemake.output.index)
