# Prompt sets per model and operator, and how accurately each model (and each training checkpoint) answers.


rule prompts:
    input:
        unpack(model_inputs("handle")),
    output:
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
        answers=f"{RES}/{{model}}/answers/{{op}}.parquet",
    params:
        prompts=CFG["prompts"],
        seed=CFG["seed"],
        dtype=CFG["dtype"],
        code=script_code("prompts"),
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    log:
        f"{RES}/logs/prompts/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/prompts/{{model}}_{{op}}.tsv"
    script:
        "../scripts/prompts.py"


rule accuracy:
    input:
        unpack(model_inputs("handle")),
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
    output:
        table=f"{RES}/{{model}}/accuracy.parquet",
    params:
        code=script_code("accuracy"),
    log:
        f"{RES}/logs/accuracy/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/accuracy/{{model}}.tsv"
    script:
        "../scripts/accuracy.py"


rule checkpoint_accuracy:
    input:
        unpack(model_inputs("index")),
    output:
        table=f"{RES}/{{model}}/checkpoint_accuracy.parquet",
    params:
        prompts=CFG["prompts"],
        operators=OPS,
        dtype=CFG["dtype"],
        code=script_code("checkpoint_accuracy"),
    wildcard_constraints:
        model=alternatives(names(with_checkpoints=True)),
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    log:
        f"{RES}/logs/checkpoint_accuracy/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/checkpoint_accuracy/{{model}}.tsv"
    script:
        "../scripts/checkpoint_accuracy.py"
