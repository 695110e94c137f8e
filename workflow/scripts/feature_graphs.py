"""Attribution graphs of one model's replacement model on the first prompts of one operator's prompt set:
pruned graphs (and circuit-tracer JSON), their typed edges (OV / Q / K / direct), their scores, feature-circuit faithfulness, attribution vs exact ablation."""
from circuitflow.circuits.job import load_model_job
from circuitflow.features.dictionary import load_dictionaries
from circuitflow.features.graph_analysis import analyse_prompts
from circuitflow.io import atomic_dir, write_parquet
from circuitflow.snakejob import job_performance, snakemake_job
from circuitflow.tables import read_table, with_labels

with snakemake_job(snakemake, torch_threads=True) as log:
    perf = job_performance(snakemake)
    p, g, i, o = snakemake.params, snakemake.params.graph, snakemake.input, snakemake.output
    job = load_model_job(i.handle, perf.device, p.dtype, perf.device_map)
    dictionaries = load_dictionaries(i.dictionaries, perf.device)
    prompts = read_table(i.prompts, ["prompt"])["prompt"].head(g["prompts"]).tolist()  # correctly answered ones
    with atomic_dir(o.graphs) as folder:
        tables = analyse_prompts(job.bridge, job.tokenizer, dictionaries, prompts, folder,
                                 node_threshold=g["node_threshold"], edge_threshold=g["edge_threshold"],
                                 fractions=g["fractions"], max_logits=g["max_logits"],
                                 logit_probability=g["logit_probability"], qk_edges=g["qk_edges"],
                                 model_name=job.handle.name)
    scores, ablation = tables["scores"], tables["ablation"].drop_duplicates("graph")
    log.info("replacement score %s, completeness score %s, completeness error %s",
             scores["replacement_score"].round(3).tolist(), scores["completeness_score"].round(3).tolist(),
             scores["completeness_error"].tolist())
    log.info("attribution vs exact ablation, Pearson r: real model %s, frozen attention and norms %s",
             ablation["pearson"].round(3).tolist(), ablation["pearson_frozen"].round(3).tolist())
    labels = dict(model=job.handle.name, revision=job.handle.revision, operator=snakemake.wildcards.op)
    if g["qk_edges"]:
        log.info("attention features' inputs, share of |weight| by type: OV %s, Q %s, K %s",
                 *(scores[f"{t}_share"].round(3).tolist() for t in ("ov", "q", "k")))
    for name in ("nodes", "edges", "scores", "faithfulness", "ablation"):
        write_parquet(with_labels(tables[name], **labels), o[name])
