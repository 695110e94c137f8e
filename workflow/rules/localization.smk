# The arithmetic paper's localization per model and operator: IE maps, neuron scores, probes, the paper's
# mean-ablation circuits and the attention analysis of the top heads; figures are drawn from the tables.


rule ie_maps:
    input:
        unpack(model_inputs("handle")),
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
    output:
        table=f"{RES}/{{model}}/ie_maps/{{op}}.parquet",
    log:
        f"{RES}/logs/ie_maps/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/ie_maps/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        loc=keys("localization", "seeds"),
        dtype=CFG["dtype"],
        partial=lambda w: f"{RES}/{w.model}/.partial/ie_maps_{w.op}",
        code=script_code("ie_maps"),
    script:
        "../scripts/ie_maps.py"


rule neuron_scores:
    input:
        unpack(model_inputs("handle")),
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
    output:
        table=f"{RES}/{{model}}/neurons/{{op}}.parquet",
    log:
        f"{RES}/logs/neuron_scores/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/neuron_scores/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        loc=keys("localization", "exact_neuron_layers"),
        dtype=CFG["dtype"],
        code=script_code("neuron_scores"),
    script:
        "../scripts/neuron_scores.py"


rule probes:
    input:
        unpack(model_inputs("handle")),
        answers=f"{RES}/{{model}}/answers/{{op}}.parquet",
    output:
        table=f"{RES}/{{model}}/probes/{{op}}.parquet",
    log:
        f"{RES}/logs/probes/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/probes/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        seed=CFG["seed"],
        dtype=CFG["dtype"],
        code=script_code("probes"),
    script:
        "../scripts/probes.py"


rule paper_circuits:
    input:
        unpack(model_inputs("handle")),
        prompts=f"{RES}/{{model}}/prompts/{{op}}.parquet",
        ie_maps=f"{RES}/{{model}}/ie_maps/{{op}}.parquet",
        neurons=f"{RES}/{{model}}/neurons/{{op}}.parquet",
        probes=f"{RES}/{{model}}/probes/{{op}}.parquet",
    output:
        table=f"{RES}/{{model}}/paper_circuits/{{op}}.parquet",
    log:
        f"{RES}/logs/paper_circuits/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/paper_circuits/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        loc=keys(
            "localization", "top_heads", "heuristics_layer", "probe_threshold", "neurons_per_layer", "random_seeds"
        ),
        prompts=keys("prompts", "operand_max"),
        dtype=CFG["dtype"],
        code=script_code("paper_circuits"),
    script:
        "../scripts/paper_circuits.py"


rule attention:
    input:
        unpack(model_inputs("handle")),
        ie_maps=f"{RES}/{{model}}/ie_maps/{{op}}.parquet",
    output:
        table=f"{RES}/{{model}}/attention/{{op}}.parquet",
        ov=f"{RES}/{{model}}/attention/{{op}}_ov.parquet",
    log:
        f"{RES}/logs/attention/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/attention/{{model}}_{{op}}.tsv"
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        loc=keys("localization", "attention_heads"),
        operand_max=CFG["prompts"]["operand_max"],
        dtype=CFG["dtype"],
        code=script_code("attention"),
    script:
        "../scripts/attention.py"


rule plot_localization:
    input:
        ie_maps=f"{RES}/{{model}}/ie_maps/{{op}}.parquet",
        neurons=f"{RES}/{{model}}/neurons/{{op}}.parquet",
        probes=f"{RES}/{{model}}/probes/{{op}}.parquet",
        attention=f"{RES}/{{model}}/attention/{{op}}.parquet",
        ov=f"{RES}/{{model}}/attention/{{op}}_ov.parquet",
    output:
        ie_map=report(
            f"{RES}/figures/{{model}}/ie_map_{{op}}.png",
            caption="../report/ie_map.rst",
            category="4 Localization",
            subcategory="{model}",
            labels={"figure": "IE map", "operator": "{op}"},
        ),
        neurons=report(
            f"{RES}/figures/{{model}}/neurons_{{op}}.png",
            caption="../report/neurons.rst",
            category="4 Localization",
            subcategory="{model}",
            labels={"figure": "neuron importance", "operator": "{op}"},
        ),
        probes=report(
            f"{RES}/figures/{{model}}/probes_{{op}}.png",
            caption="../report/probes.rst",
            category="4 Localization",
            subcategory="{model}",
            labels={"figure": "linear probes", "operator": "{op}"},
        ),
        attention=report(
            f"{RES}/figures/{{model}}/attention_{{op}}.png",
            caption="../report/attention.rst",
            category="4 Localization",
            subcategory="{model}",
            labels={"figure": "attention and OV circuit", "operator": "{op}"},
        ),
    log:
        f"{RES}/logs/plot_localization/{{model}}_{{op}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_localization/{{model}}_{{op}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_localization"),
    script:
        "../scripts/plot_localization.py"


rule plot_paper_faithfulness:
    input:
        tables=expand(f"{RES}/{{{{model}}}}/paper_circuits/{{op}}.parquet", op=OPS),
    output:
        png=report(
            f"{RES}/figures/{{model}}/paper_faithfulness.png",
            caption="../report/paper_faithfulness.rst",
            category="4 Localization",
            subcategory="{model}",
            labels={"figure": "paper circuits' faithfulness", "operator": "all"},
        ),
        pdf=f"{RES}/figures/{{model}}/paper_faithfulness.pdf",
    log:
        f"{RES}/logs/plot_paper_faithfulness/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_paper_faithfulness/{{model}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_paper_faithfulness"),
    script:
        "../scripts/plot_paper_faithfulness.py"


rule checkpoint_ie_maps:
    input:
        unpack(model_inputs("index")),
        prompts=expand(f"{RES}/{{{{model}}}}/prompts/{{op}}.parquet", op=OPS),
        answers=expand(f"{RES}/{{{{model}}}}/answers/{{op}}.parquet", op=OPS),
    output:
        table=f"{RES}/{{model}}/checkpoint_ie_maps.parquet",
    log:
        f"{RES}/logs/checkpoint_ie_maps/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/checkpoint_ie_maps/{{model}}.tsv"
    wildcard_constraints:
        model=alternatives(names(with_checkpoints=True)),
    conda:
        ENV
    threads: MODEL_THREADS
    resources:
        gpu=GPU,
    params:
        loc={"seeds": CFG["localization"]["seeds"][:1]},  # across checkpoints: the first seed only
        operators=OPS,
        dtype=CFG["dtype"],
        partial=lambda w: f"{RES}/{w.model}/.partial/checkpoint_ie_maps",
        code=script_code("checkpoint_ie_maps"),
    script:
        "../scripts/checkpoint_ie_maps.py"


rule plot_checkpoint_ie:
    input:
        table=f"{RES}/{{model}}/checkpoint_ie_maps.parquet",
    output:
        png=report(
            f"{RES}/figures/{{model}}/checkpoint_ie.png",
            caption="../report/checkpoint_ie.rst",
            category="4 Localization",
            subcategory="{model}",
            labels={"figure": "IE across checkpoints", "operator": "all"},
        ),
        pdf=f"{RES}/figures/{{model}}/checkpoint_ie.pdf",
    log:
        f"{RES}/logs/plot_checkpoint_ie/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_checkpoint_ie/{{model}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_checkpoint_ie"),
    script:
        "../scripts/plot_checkpoint_ie.py"
