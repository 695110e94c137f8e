"""Download a hub model (and its training-checkpoint revisions) into the Hugging Face cache; write handles."""
from circuitflow.io import write_json
from circuitflow.logs import log_to
from circuitflow.models.registry import ModelSpec
from circuitflow.models import ModelHandle, write_handle
from circuitflow.models.download import download_snapshot

with log_to(snakemake.log[0]) as log:
    spec = ModelSpec(**snakemake.params.spec)
    handles = []
    for revision in (*spec.checkpoints, spec.revision):
        log.info("downloading %s@%s", spec.repo_id, revision)
        path = download_snapshot(spec.repo_id, revision)
        handles.append(ModelHandle(spec.name, path, revision, "hub", {"repo_id": spec.repo_id}))
    write_json([h.__dict__ for h in handles[:-1]], snakemake.output.index)
    write_handle(handles[-1], snakemake.output.handle)
