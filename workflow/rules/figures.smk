# Figures are drawn from tables alone (no model is loaded), so restyling one reruns only its rule.


rule plot_accuracy:
    input:
        tables=expand(f"{RES}/{{model}}/accuracy.parquet", model=names()),
    output:
        png=report(
            f"{RES}/figures/accuracy.png",
            caption="../report/accuracy.rst",
            category="2 Models and accuracy",
            subcategory="all models",
            labels={"figure": "accuracy per operator"},
        ),
        pdf=f"{RES}/figures/accuracy.pdf",
    log:
        f"{RES}/logs/plot_accuracy/all.log",
    benchmark:
        f"{RES}/benchmarks/plot_accuracy/all.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_accuracy"),
    script:
        "../scripts/plot_accuracy.py"


rule plot_checkpoint_accuracy:
    input:
        table=f"{RES}/{{model}}/checkpoint_accuracy.parquet",
    output:
        png=report(
            f"{RES}/figures/{{model}}/checkpoint_accuracy.png",
            caption="../report/checkpoint_accuracy.rst",
            category="2 Models and accuracy",
            subcategory="{model}",
            labels={"figure": "accuracy across checkpoints"},
        ),
        pdf=f"{RES}/figures/{{model}}/checkpoint_accuracy.pdf",
    log:
        f"{RES}/logs/plot_checkpoint_accuracy/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_checkpoint_accuracy/{{model}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_checkpoint_accuracy"),
    script:
        "../scripts/plot_checkpoint_accuracy.py"


rule plot_training:
    input:
        table=f"{RES}/models/{{model}}/training_log.parquet",
    output:
        png=report(
            f"{RES}/figures/{{model}}/training.png",
            caption="../report/training.rst",
            category="2 Models and accuracy",
            subcategory="{model}",
            labels={"figure": "training curve"},
        ),
        pdf=f"{RES}/figures/{{model}}/training.pdf",
    log:
        f"{RES}/logs/plot_training/{{model}}.log",
    benchmark:
        f"{RES}/benchmarks/plot_training/{{model}}.tsv"
    conda:
        ENV
    params:
        code=script_code("plot_training"),
    script:
        "../scripts/plot_training.py"
