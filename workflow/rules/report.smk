# The report is Snakemake's: `snakemake --report results/report.html` after a run. Figures carry report(...) markup
# in their rules (category by stage, subcategory by model, labels, captions in workflow/report/); this rule adds the
# headline tables and the run's provenance as report items, and the description page below opens the report.


report: "../report/workflow.rst"


rule report:
    input:
        accuracy=expand(f"{RES}/{{model}}/accuracy.parquet", model=names()),
        areas=[f"{RES}/{m}/circuits/{op}/areas.parquet" for m in stage_models("circuits") for op in OPS],
        paper_circuits=[f"{RES}/{m}/paper_circuits/{op}.parquet" for m in stage_models("localization") for op in OPS],
        heuristics=[f"{RES}/{m}/heuristics/{op}.parquet" for m in stage_models("localization") for op in OPS],
        prompt_knockouts=[
            f"{RES}/{m}/heuristics/{op}_prompt_knockout.parquet" for m in stage_models("localization") for op in OPS
        ],
        feature_quality=[f"{RES}/{m}/features/quality.parquet" for m in feature_models()],
        feature_scores=[f"{RES}/{m}/features/{op}/graph_scores.parquet" for m in feature_models() for op in OPS],
        feature_ablation=[f"{RES}/{m}/features/{op}/ablation.parquet" for m in feature_models() for op in OPS],
        feature_comparison=[
            f"{RES}/{m}/features/heuristics/{op}_comparison.parquet"
            for m in feature_models()
            if m in stage_models("localization")
            for op in OPS
        ],
    output:
        accuracy=report(
            f"{RES}/tables/accuracy.html",
            caption="../report/table_accuracy.rst",
            category="1 Headline tables",
            labels={"table": "accuracy per model and operator"},
        ),
        areas=report(
            f"{RES}/tables/circuit_cpr.html",
            caption="../report/table_circuit_cpr.rst",
            category="1 Headline tables",
            labels={"table": "circuit CPR per method and level"},
        ),
        paper_circuits=report(
            f"{RES}/tables/paper_circuits.html",
            caption="../report/table_paper_circuits.rst",
            category="1 Headline tables",
            labels={"table": "the paper's circuits: faithfulness"},
        ),
        heuristics=report(
            f"{RES}/tables/heuristic_neurons.html",
            caption="../report/table_heuristic_neurons.rst",
            category="1 Headline tables",
            labels={"table": "heuristic neurons and prompt knockout"},
        ),
        features=report(
            f"{RES}/tables/feature_circuits.html",
            caption="../report/table_feature_circuits.rst",
            category="1 Headline tables",
            labels={"table": "feature circuits"},
        ),
        provenance=report(
            f"{RES}/tables/provenance.html",
            caption="../report/provenance.rst",
            category="7 Provenance",
            labels={"record": "commit, package versions, device, config"},
        ),
    log:
        f"{RES}/logs/report/all.log",
    benchmark:
        f"{RES}/benchmarks/report/all.tsv"
    conda:
        ENV
    params:
        config=without_performance(CFG),
        device=CFG["device"],
        code=script_code("report"),
    script:
        "../scripts/report.py"
