# Circuit discovery (EAP / EAP-IG graphs), faithfulness curves and circuit drawings, per model and operator.
# One job scores every configured method, so the model is loaded once per (model, operator).


rule attribute:
    input:
        unpack(model_inputs("handle")),
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
    output:
        graphs=expand(f"{RES}/{{{{model}}}}/graphs/{{{{op}}}}/{{method}}.pt", method=CIRCUIT_METHODS),
        json=expand(f"{RES}/{{{{model}}}}/graphs/{{{{op}}}}/{{method}}.json", method=CIRCUIT_METHODS),
        agreement=f"{RES}/{{model}}/circuits/{{op}}/agreement.parquet",
    log:
        f"{RES}/logs/attribute/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/attribute/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        circuits=keys("circuits", "methods", "metric", "intervention", "ig_steps"),
        dtype=CFG["dtype"],
        code=script_code("attribute"),
    script:
        "../scripts/attribute.py"


rule faithfulness:
    input:
        unpack(model_inputs("handle")),
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
        graphs=expand(f"{RES}/{{{{model}}}}/graphs/{{{{op}}}}/{{method}}.pt", method=CIRCUIT_METHODS),
    output:
        curve=f"{RES}/{{model}}/circuits/{{op}}/faithfulness.parquet",
        areas=f"{RES}/{{model}}/circuits/{{op}}/areas.parquet",
    log:
        f"{RES}/logs/faithfulness/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/faithfulness/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        circuits=keys("circuits", "methods", "metric", "intervention", "fractions", "selection", "absolute", "levels"),
        dtype=CFG["dtype"],
        code=script_code("faithfulness"),
    script:
        "../scripts/faithfulness.py"


rule plot_faithfulness:
    input:
        curve=f"{RES}/{{model}}/circuits/{{op}}/faithfulness.parquet",
    output:
        png=report(
            f"{RES}/figures/{{model}}/faithfulness_{{op}}.png",
            caption="../report/faithfulness.rst",
            category="3 Circuits (EAP, EAP-IG)",
            subcategory="{model}",
            labels=lambda wildcards: circuit_labels(wildcards, "faithfulness", None, "all"),
        ),
        pdf=f"{RES}/figures/{{model}}/faithfulness_{{op}}.pdf",
    log:
        f"{RES}/logs/plot_faithfulness/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_faithfulness/{{model}}_{{op}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_faithfulness"),
    script:
        "../scripts/plot_faithfulness.py"


rule draw_circuits:
    input:
        graphs=expand(f"{RES}/{{{{model}}}}/graphs/{{{{op}}}}/{{method}}.pt", method=CIRCUIT_METHODS),
        curve=f"{RES}/{{model}}/circuits/{{op}}/faithfulness.parquet",
    output:
        pngs=[
            report(
                circuit_drawing_path("{model}", "{op}", m, level),
                caption="../report/circuit.rst",
                category="3 Circuits (EAP, EAP-IG)",
                subcategory="{model}",
                labels=lambda wildcards, m=m, level=level: circuit_labels(wildcards, "circuit graph", m, level),
            )
            for m, level in CIRCUIT_DRAWINGS
        ],
    log:
        f"{RES}/logs/draw_circuits/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/draw_circuits/{{model}}_{{op}}.tsv"
    conda:
        ENV
    params:
        n_edges=CFG["circuits"]["draw_edges"],
        faithfulness=CFG["circuits"]["draw_faithfulness"],
        absolute=CFG["circuits"]["absolute"],
        methods=CIRCUIT_METHODS,
        drawings=CIRCUIT_DRAWINGS,
        code=script_code("draw_circuits"),
    script:
        "../scripts/draw_circuits.py"
