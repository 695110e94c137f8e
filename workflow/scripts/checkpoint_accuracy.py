"""Accuracy per operator of every training checkpoint of one model (all checkpoints in one process)."""
import torch

from circuitflow.io import write_parquet
from circuitflow.models import load_hf_model, load_tokenizer, read_handles
from circuitflow.prompts import PromptConfig, evaluate_operator, resolve_answer_max
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import accuracy_table, concat

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p = snakemake.params
    cfg = PromptConfig(**p.prompts)
    tables = []
    for handle in read_handles(snakemake.input.index):
        tokenizer = load_tokenizer(handle)
        answer_max = resolve_answer_max(tokenizer, cfg)
        model = load_hf_model(handle, perf.device, p.dtype, perf.device_map)
        for op in p.operators:
            answers = evaluate_operator(model, tokenizer, op, cfg, answer_max, perf.batch_size)
            tables.append(accuracy_table(answers, model=handle.name, revision=handle.revision, step=handle.step))
        log.info("%s: %s", handle.revision, tables[-1].to_dict("records"))
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    write_parquet(concat(tables), snakemake.output.table)
