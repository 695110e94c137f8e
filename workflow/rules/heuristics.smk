# Heuristic neurons (paper §4–5) per localization model and operator: classification of the important neurons into
# heuristics over the operand grid, heuristic and prompt knockouts; the figure is drawn from the tables.


rule heuristics:
    input:
        unpack(model_inputs("handle")),
        answers=f"{RES}/{{model}}/answers/{{op}}.parquet",
        neurons=f"{RES}/{{model}}/neurons/{{op}}.parquet",
        paper_circuits=f"{RES}/{{model}}/paper_circuits/{{op}}.parquet",
    output:
        table=f"{RES}/{{model}}/heuristics/{{op}}.parquet",
        knockout=f"{RES}/{{model}}/heuristics/{{op}}_knockout.parquet",
        prompt_knockout=f"{RES}/{{model}}/heuristics/{{op}}_prompt_knockout.parquet",
        maps=f"{RES}/{{model}}/heuristics/{{op}}_maps.parquet",
    log:
        f"{RES}/logs/heuristics/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/heuristics/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        heur=keys_except("heuristics", "checkpoint_steps"),
        seed=CFG["seed"],
        dtype=CFG["dtype"],
        code=script_code("heuristics"),
    script:
        "../scripts/heuristics.py"


rule plot_heuristics:
    input:
        table=f"{RES}/{{model}}/heuristics/{{op}}.parquet",
        knockout=f"{RES}/{{model}}/heuristics/{{op}}_knockout.parquet",
        prompt_knockout=f"{RES}/{{model}}/heuristics/{{op}}_prompt_knockout.parquet",
        maps=f"{RES}/{{model}}/heuristics/{{op}}_maps.parquet",
    output:
        summary=report(
            f"{RES}/figures/{{model}}/heuristics_{{op}}.png",
            caption="../report/heuristics.rst",
            category="5 Heuristic neurons",
            subcategory="{model}",
            labels={"figure": "heuristic families and knockouts", "operator": "{op}"},
        ),
        maps=report(
            f"{RES}/figures/{{model}}/heuristic_maps_{{op}}.png",
            caption="../report/heuristic_maps.rst",
            category="5 Heuristic neurons",
            subcategory="{model}",
            labels={"figure": "neuron activation maps", "operator": "{op}"},
        ),
    log:
        f"{RES}/logs/plot_heuristics/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_heuristics/{{model}}_{{op}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_heuristics"),
    script:
        "../scripts/plot_heuristics.py"


rule checkpoint_heuristics:
    input:
        unpack(model_inputs("index")),
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
        prompts=expand(f"{RES}/{{{{model}}}}/prompts/{{op}}.parquet", op=OPS),
        final=expand(f"{RES}/{{{{model}}}}/heuristics/{{op}}.parquet", op=OPS),
        paper_circuits=expand(f"{RES}/{{{{model}}}}/paper_circuits/{{op}}.parquet", op=OPS),
    output:
        table=f"{RES}/{{model}}/checkpoint_heuristics.parquet",
    log:
        f"{RES}/logs/checkpoint_heuristics/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/checkpoint_heuristics/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(names(with_checkpoints=True)),
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        heur=keys_except("heuristics", "knockout_min_neurons", "map_neurons"),
        operators=OPS,
        seed=CFG["seed"],
        dtype=CFG["dtype"],
        partial=lambda w: f"{RES}/{w.model}/.partial/checkpoint_heuristics",
        code=script_code("checkpoint_heuristics"),
    script:
        "../scripts/checkpoint_heuristics.py"


rule plot_checkpoint_heuristics:
    input:
        table=f"{RES}/{{model}}/checkpoint_heuristics.parquet",
    output:
        png=report(
            f"{RES}/figures/{{model}}/checkpoint_heuristics.png",
            caption="../report/checkpoint_heuristics.rst",
            category="5 Heuristic neurons",
            subcategory="{model}",
            labels={"figure": "heuristics across checkpoints", "operator": "all"},
        ),
        pdf=f"{RES}/figures/{{model}}/checkpoint_heuristics.pdf",
    log:
        f"{RES}/logs/plot_checkpoint_heuristics/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_checkpoint_heuristics/{{model}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_checkpoint_heuristics"),
    script:
        "../scripts/plot_checkpoint_heuristics.py"
