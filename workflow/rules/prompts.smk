# Prompt sets per model and operator, and how accurately each model (and each training checkpoint) answers.


rule prompts:
    input:
        handle=model_handle,
    output:
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
        answers=f"{RES}/{{model}}/answers/{{op}}.parquet",
    params:
        prompts=CFG["prompts"],
        seed=CFG["seed"],
        device=CFG["device"],
        dtype=CFG["dtype"],
        device_map=CFG["device_map"],
        batch_size=CFG["batch_size"],
        code=code_version("prompts", "arithmetic", "models", "tables"),
    resources:
        gpu=GPU,
    log:
        f"{RES}/logs/prompts/{{model}}_{{op}}.log",
    script:
        "../scripts/prompts.py"


rule accuracy:
    input:
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
    output:
        table=f"{RES}/{{model}}/accuracy.parquet",
    params:
        code=code_version("tables"),
    log:
        f"{RES}/logs/accuracy/{{model}}.log",
    script:
        "../scripts/accuracy.py"


rule checkpoint_accuracy:
    input:
        index=f"{RES}/models/{{model}}/checkpoints.json",
    output:
        table=f"{RES}/{{model}}/checkpoint_accuracy.parquet",
    params:
        prompts=CFG["prompts"],
        operators=OPS,
        device=CFG["device"],
        dtype=CFG["dtype"],
        device_map=CFG["device_map"],
        batch_size=CFG["batch_size"],
        code=code_version("prompts", "arithmetic", "models", "tables"),
    wildcard_constraints:
        model=alternatives(names(with_checkpoints=True)),
    resources:
        gpu=GPU,
    log:
        f"{RES}/logs/checkpoint_accuracy/{{model}}.log",
    script:
        "../scripts/checkpoint_accuracy.py"
