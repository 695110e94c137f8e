# Prompt sets per model and operator, and how accurately each model (and each training checkpoint) answers.


rule prompts:
    input:
        unpack(model_inputs("handle")),
    output:
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
        answers=f"{RES}/{{model}}/answers/{{op}}.parquet",
    log:
        f"{RES}/logs/prompts/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/prompts/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        prompts=CFG["prompts"],
        seed=CFG["seed"],
        dtype=CFG["dtype"],
        code=script_code("prompts"),
    script:
        "../scripts/prompts.py"


rule accuracy:
    input:
        unpack(model_inputs("handle")),
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
    output:
        table=f"{RES}/{{model}}/accuracy.parquet",
    log:
        f"{RES}/logs/accuracy/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/accuracy/{{model}}.tsv"
    conda:
        ENV
    params:
        code=script_code("accuracy"),
    script:
        "../scripts/accuracy.py"


rule checkpoint_accuracy:
    input:
        unpack(model_inputs("index")),
    output:
        table=f"{RES}/{{model}}/checkpoint_accuracy.parquet",
    log:
        f"{RES}/logs/checkpoint_accuracy/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/checkpoint_accuracy/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(names(with_checkpoints=True)),
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        prompts=CFG["prompts"],
        operators=OPS,
        dtype=CFG["dtype"],
        code=script_code("checkpoint_accuracy"),
    script:
        "../scripts/checkpoint_accuracy.py"
