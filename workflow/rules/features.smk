# Feature circuits (circuitflow.features) per feature model: sparse dictionaries trained on the model's arithmetic
# prompts (or loaded), their quality; per operator the attribution graphs of the replacement model (pruned, with
# circuit-tracer JSON), feature-circuit faithfulness and attribution vs exact ablation; heuristics as features
# against the heuristic neurons; configured feature interventions. Figures are drawn from the tables.


rule dictionaries:
    input:
        unpack(model_inputs("handle")),
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
    output:
        dictionaries=directory(f"{RES}/{{model}}/features/dictionaries"),
        quality=f"{RES}/{{model}}/features/quality.parquet",
    log:
        f"{RES}/logs/dictionaries/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/dictionaries/{{model}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        dictionaries=CFG["features"]["dictionaries"],
        seed=CFG["seed"],
        dtype=CFG["dtype"],
        code=script_code("dictionaries"),
    script:
        "../scripts/dictionaries.py"


rule feature_graphs:
    input:
        unpack(model_inputs("handle")),
        dictionaries=f"{RES}/{{model}}/features/dictionaries",
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
    output:
        graphs=directory(f"{RES}/{{model}}/features/graphs/{{op}}"),
        nodes=f"{RES}/{{model}}/features/{{op}}/graph_nodes.parquet",
        edges=f"{RES}/{{model}}/features/{{op}}/graph_edges.parquet",
        scores=f"{RES}/{{model}}/features/{{op}}/graph_scores.parquet",
        faithfulness=f"{RES}/{{model}}/features/{{op}}/faithfulness.parquet",
        ablation=f"{RES}/{{model}}/features/{{op}}/ablation.parquet",
    log:
        f"{RES}/logs/feature_graphs/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/feature_graphs/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        graph=CFG["features"]["graph"],
        dtype=CFG["dtype"],
        code=script_code("feature_graphs"),
    script:
        "../scripts/feature_graphs.py"


rule feature_heuristics:
    input:
        unpack(model_inputs("handle")),
        dictionaries=f"{RES}/{{model}}/features/dictionaries",
        answers=f"{RES}/{{model}}/answers/{{op}}.parquet",
        neurons=f"{RES}/{{model}}/heuristics/{{op}}.parquet",
    output:
        table=f"{RES}/{{model}}/features/heuristics/{{op}}.parquet",
        maps=f"{RES}/{{model}}/features/heuristics/{{op}}_maps.parquet",
        comparison=f"{RES}/{{model}}/features/heuristics/{{op}}_comparison.parquet",
        splits=f"{RES}/{{model}}/features/heuristics/{{op}}_splits.parquet",
        knockout=f"{RES}/{{model}}/features/heuristics/{{op}}_knockout.parquet",
    log:
        f"{RES}/logs/feature_heuristics/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/feature_heuristics/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        features=CFG["features"]["heuristics"],
        heur=keys_except("heuristics", "checkpoint_steps"),
        seed=CFG["seed"],
        dtype=CFG["dtype"],
        code=script_code("feature_heuristics"),
    script:
        "../scripts/feature_heuristics.py"


rule feature_interventions:
    input:
        unpack(model_inputs("handle")),
        dictionaries=f"{RES}/{{model}}/features/dictionaries",
        prompts=expand(f"{RES}/{{{{model}}}}/prompts/{{op}}.parquet", op=OPS),
    output:
        effects=f"{RES}/{{model}}/features/interventions.parquet",
        patterns=f"{RES}/{{model}}/features/intervention_patterns.parquet",
    log:
        f"{RES}/logs/feature_interventions/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/feature_interventions/{{model}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        interventions=CFG["features"]["interventions"],
        heads=CFG["features"]["pattern_heads"],
        metric=CFG["circuits"]["metric"],
        dtype=CFG["dtype"],
        code=script_code("feature_interventions"),
    script:
        "../scripts/feature_interventions.py"


rule plot_dictionary_quality:
    input:
        quality=f"{RES}/{{model}}/features/quality.parquet",
    output:
        png=report(
            f"{RES}/figures/{{model}}/features/dictionary_quality.png",
            caption="../report/dictionary_quality.rst",
            category="6 Feature circuits",
            subcategory="{model}",
            labels={"figure": "dictionary quality", "operator": "all"},
        ),
        pdf=f"{RES}/figures/{{model}}/features/dictionary_quality.pdf",
    log:
        f"{RES}/logs/plot_dictionary_quality/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_dictionary_quality/{{model}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_dictionary_quality"),
    script:
        "../scripts/plot_dictionary_quality.py"


rule plot_feature_graph:
    input:
        graphs=f"{RES}/{{model}}/features/graphs/{{op}}",
        nodes=f"{RES}/{{model}}/features/{{op}}/graph_nodes.parquet",
        scores=f"{RES}/{{model}}/features/{{op}}/graph_scores.parquet",
    output:
        png=report(
            f"{RES}/figures/{{model}}/features/graph_{{op}}.png",
            caption="../report/feature_graph.rst",
            category="6 Feature circuits",
            subcategory="{model}",
            labels={"figure": "attribution graph", "operator": "{op}"},
        ),
        pdf=f"{RES}/figures/{{model}}/features/graph_{{op}}.pdf",
    log:
        f"{RES}/logs/plot_feature_graph/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_feature_graph/{{model}}_{{op}}.tsv"
    conda:
        ENV
    params:
        graph=CFG["features"]["graph"],
        code=script_code("plot_feature_graph"),
    script:
        "../scripts/plot_feature_graph.py"


rule plot_feature_faithfulness:
    input:
        faithfulness=f"{RES}/{{model}}/features/{{op}}/faithfulness.parquet",
        ablation=f"{RES}/{{model}}/features/{{op}}/ablation.parquet",
    output:
        png=report(
            f"{RES}/figures/{{model}}/features/faithfulness_{{op}}.png",
            caption="../report/feature_faithfulness.rst",
            category="6 Feature circuits",
            subcategory="{model}",
            labels={"figure": "feature-circuit faithfulness", "operator": "{op}"},
        ),
        pdf=f"{RES}/figures/{{model}}/features/faithfulness_{{op}}.pdf",
    log:
        f"{RES}/logs/plot_feature_faithfulness/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_feature_faithfulness/{{model}}_{{op}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_feature_faithfulness"),
    script:
        "../scripts/plot_feature_faithfulness.py"


rule plot_feature_heuristics:
    input:
        table=f"{RES}/{{model}}/features/heuristics/{{op}}.parquet",
        maps=f"{RES}/{{model}}/features/heuristics/{{op}}_maps.parquet",
        comparison=f"{RES}/{{model}}/features/heuristics/{{op}}_comparison.parquet",
        splits=f"{RES}/{{model}}/features/heuristics/{{op}}_splits.parquet",
        knockout=f"{RES}/{{model}}/features/heuristics/{{op}}_knockout.parquet",
    output:
        summary=report(
            f"{RES}/figures/{{model}}/features/heuristics_{{op}}.png",
            caption="../report/feature_heuristics.rst",
            category="6 Feature circuits",
            subcategory="{model}",
            labels={"figure": "heuristics: features vs neurons", "operator": "{op}"},
        ),
        maps=report(
            f"{RES}/figures/{{model}}/features/feature_maps_{{op}}.png",
            caption="../report/feature_maps.rst",
            category="6 Feature circuits",
            subcategory="{model}",
            labels={"figure": "feature activation maps", "operator": "{op}"},
        ),
    log:
        f"{RES}/logs/plot_feature_heuristics/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_feature_heuristics/{{model}}_{{op}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_feature_heuristics"),
    script:
        "../scripts/plot_feature_heuristics.py"
