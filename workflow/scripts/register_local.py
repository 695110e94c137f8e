"""Point a handle at a local Hugging Face model directory (stored relative to the handle when inside the project)."""
from circuitflow.logs import log_to
from circuitflow.models.handle import ModelHandle, write_handle, write_handles
from circuitflow.models.registry import ModelSpec

with log_to(snakemake.log[0]):
    spec = ModelSpec(**snakemake.params.spec)
    write_handle(ModelHandle(spec.name, spec.path, None, "local", {"path": spec.path}), snakemake.output.handle)
    write_handles([], snakemake.output.index)
