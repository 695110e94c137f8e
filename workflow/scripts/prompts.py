"""Evaluate a model on every legal prompt of one operator and choose its prompt set."""
from dataclasses import asdict

from circuitflow.io import write_parquet
from circuitflow.models import load_hf_model, load_tokenizer, read_handle
from circuitflow.prompts import PromptConfig, build_prompt_set, resolve_answer_max
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p = snakemake.params
    handle = read_handle(snakemake.input.handle)
    cfg = PromptConfig(**{"seed": p.seed, **p.prompts})
    tokenizer = load_tokenizer(handle)
    answer_max = resolve_answer_max(tokenizer, cfg)
    model = load_hf_model(handle, perf.device, p.dtype, perf.device_map)
    op = snakemake.wildcards.op
    chosen, evaluated = build_prompt_set(model, tokenizer, op, cfg, answer_max, perf.batch_size)
    log.info("%s: %d/%d legal prompts correct (answers 0..%d); chose %d with %d distinct answers", op,
             evaluated["correct"].sum(), len(evaluated), answer_max, len(chosen), chosen["answer"].nunique())
    for frame in (chosen, evaluated):
        with_labels(frame, model=handle.name, revision=handle.revision)
    chosen.attrs["prompt_config"] = asdict(cfg)
    write_parquet(chosen, snakemake.output.prompts)
    write_parquet(evaluated, snakemake.output.answers)
