"""Point a handle at a local Hugging Face model directory."""
from circuitflow.io import write_json
from circuitflow.logs import log_to
from circuitflow.models.registry import ModelSpec
from circuitflow.models import ModelHandle, write_handle

with log_to(snakemake.log[0]):
    spec = ModelSpec(**snakemake.params.spec)
    write_handle(ModelHandle(spec.name, spec.path, None, "local", {"path": spec.path}), snakemake.output.handle)
    write_json([], snakemake.output.index)
