"""Download a hub model (and its training-checkpoint revisions) into the Hugging Face cache; write handles that
name each revision's commit (the cache's snapshot folder), so they find the cache wherever HF_HOME points."""
from pathlib import Path

from circuitflow.logs import log_to
from circuitflow.models.registry import ModelSpec
from circuitflow.models.handle import ModelHandle, write_handle, write_handles
from circuitflow.models.download import download_snapshot

with log_to(snakemake.log[0]) as log:
    spec = ModelSpec(**snakemake.params.spec)
    handles = []
    for revision in (*spec.checkpoints, spec.revision):
        log.info("downloading %s@%s", spec.repo_id, revision)
        path = download_snapshot(spec.repo_id, revision)
        provenance = {"repo_id": spec.repo_id, "commit": Path(path).name}  # the cache's snapshot folder: the commit
        log.info("%s@%s is commit %s", spec.repo_id, revision, provenance["commit"])
        handles.append(ModelHandle(spec.name, path, revision, "hub", provenance))
    write_handles(handles[:-1], snakemake.output.index)
    write_handle(handles[-1], snakemake.output.handle)
