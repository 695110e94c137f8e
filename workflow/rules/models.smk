# Every model ends as results/models/{model}/model.json (a handle to a loadable HF directory or hub id) plus
# checkpoints.json (handles of the revisions analysed across training; empty when there are none), and
# digest.json (the checked content hash of its files), an input of every job that loads the model.
# train_toy is a checkpoint: once it has run, the digest lists the checkpoint files it wrote as inputs.


checkpoint train_toy:
    output:
        checkpoints=directory(f"{RES}/models/{{model}}/checkpoints"),
        index=f"{RES}/models/{{model}}/checkpoints.json",
        handle=f"{RES}/models/{{model}}/model.json",
        training_log=f"{RES}/models/{{model}}/training_log.parquet",
    log:
        f"{RES}/logs/train_toy/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/train_toy/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(names("toy")),
    conda:
        ENV
    threads: 2  # torch always trains with 2 threads, so the weights do not depend on the cores a job gets
    params:
        recipe=lambda w: MODELS[w.model].recipe,
        seed=CFG["seed"],
        code=script_code("train_toy"),
    script:
        "../scripts/train_toy.py"


rule download_model:
    output:
        handle=f"{RES}/models/{{model}}/model.json",
        index=f"{RES}/models/{{model}}/checkpoints.json",
    log:
        f"{RES}/logs/download_model/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/download_model/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(names("hub")),
    conda:
        ENV
    params:
        spec=model_spec,
        code=script_code("download_model"),
    script:
        "../scripts/download_model.py"


rule register_local:
    output:
        handle=f"{RES}/models/{{model}}/model.json",
        index=f"{RES}/models/{{model}}/checkpoints.json",
    log:
        f"{RES}/logs/register_local/{{model}}.log",
    wildcard_constraints:
        model=alternatives(names("local")),
    conda:
        ENV
    params:
        spec=model_spec,
        code=script_code("register_local"),
    script:
        "../scripts/register_local.py"


rule finetune_toy_lora:
    input:
        unpack(lora_base_files),
    output:
        adapter=directory(f"{RES}/models/{{model}}/adapter"),
        raw=f"{RES}/models/{{model}}/adapter_raw.safetensors",
        table=f"{RES}/models/{{model}}/finetune.parquet",
    log:
        f"{RES}/logs/finetune_toy_lora/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/finetune_toy_lora/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(n for n in names("lora") if "train" in MODELS[n].adapter),
    conda:
        ENV
    threads: 2  # fixed, as for train_toy
    params:
        spec=model_spec,
        seed=CFG["seed"],
        code=script_code("finetune_toy_lora"),
    script:
        "../scripts/finetune_toy_lora.py"


rule merge_lora:
    input:
        unpack(lora_base_files),
        adapter=lora_adapter,
        adapter_files=adapter_files,
    output:
        merged=directory(f"{RES}/models/{{model}}/merged"),
        handle=f"{RES}/models/{{model}}/model.json",
        index=f"{RES}/models/{{model}}/checkpoints.json",
    log:
        f"{RES}/logs/merge_lora/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/merge_lora/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(names("lora")),
    conda:
        ENV
    threads: MODEL_THREADS
    params:
        spec=model_spec,
        code=script_code("merge_lora"),
    script:
        "../scripts/merge_lora.py"


rule model_digest:
    input:
        unpack(digest_inputs),
    output:
        digest=f"{RES}/models/{{model}}/digest.json",
    log:
        f"{RES}/logs/model_digest/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/model_digest/{{model}}.tsv"
    conda:
        ENV
    params:
        code=script_code("model_digest"),
    script:
        "../scripts/model_digest.py"
