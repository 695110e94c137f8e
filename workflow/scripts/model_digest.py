"""Hash and check a model's files (final model, every checkpoint, a LoRA's adapter): results/models/{model}/digest.json.

Every job that loads the model reads the digest, so it reruns when the weights change; a broken file stops here, in
one line, before any of them starts."""
from circuitflow.models.digest import write_model_digest
from circuitflow.snakejob import snakemake_job

with snakemake_job(snakemake) as log:  # a broken file or handle: one line (log_to), the traceback in the log
    record = write_model_digest(snakemake.input.handle, snakemake.input.index, snakemake.output.digest,
                                dict(snakemake.input.items()).get("adapter"))
    log.info("%s: %d revision(s) checked, sha256 %s", record["model"], len(record["revisions"]), record["sha256"])
