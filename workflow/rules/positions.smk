# Position-aware circuits (PEAP): graphs of (edge, position) pairs for the circuit models, per operator, on the
# prompts of the operator's most common token length; faithfulness per level, drawings with a column per position.


rule attribute_positions:
    input:
        unpack(model_inputs("handle")),
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
    output:
        graphs=expand(f"{RES}/{{{{model}}}}/position_graphs/{{{{op}}}}/{{method}}.pt", method=POSITION_METHODS),
        json=expand(f"{RES}/{{{{model}}}}/position_graphs/{{{{op}}}}/{{method}}.json", method=POSITION_METHODS),
        curve=f"{RES}/{{model}}/circuits/{{op}}/position_faithfulness.parquet",
        areas=f"{RES}/{{model}}/circuits/{{op}}/position_areas.parquet",
    log:
        f"{RES}/logs/attribute_positions/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/attribute_positions/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        circuits=keys("circuits", "metric", "intervention", "ig_steps", "fractions", "absolute"),
        positions=keys("position_circuits", "methods", "levels"),
        dtype=CFG["dtype"],
        code=script_code("position_attribute"),
    script:
        "../scripts/position_attribute.py"


rule plot_position_faithfulness:
    input:
        curve=f"{RES}/{{model}}/circuits/{{op}}/position_faithfulness.parquet",
    output:
        png=report(
            f"{RES}/figures/{{model}}/position_faithfulness_{{op}}.png",
            caption="../report/position_faithfulness.rst",
            category="3 Circuits (EAP, EAP-IG)",
            subcategory="{model}",
            labels=lambda wildcards: position_figure_labels(wildcards, "position faithfulness", None),
        ),
        pdf=f"{RES}/figures/{{model}}/position_faithfulness_{{op}}.pdf",
    log:
        f"{RES}/logs/plot_position_faithfulness/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_position_faithfulness/{{model}}_{{op}}.tsv"
    conda:
        ENV
    params:
        code=script_code("position_plot_faithfulness"),
    script:
        "../scripts/position_plot_faithfulness.py"


rule draw_position_circuits:
    input:
        graphs=expand(f"{RES}/{{{{model}}}}/position_graphs/{{{{op}}}}/{{method}}.pt", method=POSITION_METHODS),
    output:
        pngs=[
            report(
                p,
                caption="../report/position_circuit.rst",
                category="3 Circuits (EAP, EAP-IG)",
                subcategory="{model}",
                labels=lambda wildcards, m=Path(p).stem: position_figure_labels(wildcards, "position circuit", m),
            )
            for p in expand(
                f"{RES}/figures/{{{{model}}}}/position_circuits/{{{{op}}}}/{{method}}.png", method=POSITION_METHODS
            )
        ],
    log:
        f"{RES}/logs/draw_position_circuits/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/draw_position_circuits/{{model}}_{{op}}.tsv"
    conda:
        ENV
    params:
        n_edges=CFG["position_circuits"]["draw_edges"],
        absolute=CFG["circuits"]["absolute"],
        methods=POSITION_METHODS,
        code=script_code("position_draw"),
    script:
        "../scripts/position_draw.py"
