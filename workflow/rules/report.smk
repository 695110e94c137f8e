# The run's self-contained HTML report: every figure with its caption, headline tables and the config.
from circuitflow.report import read_captions


rule report:
    input:
        figures=[path for path in all_outputs() if path.endswith(".png")],
        accuracy=expand(f"{RES}/{{model}}/accuracy.parquet", model=names()),
        areas=[f"{RES}/{m}/circuits/{op}/areas.parquet" for m in stage_models("circuits") for op in OPS],
        paper_circuits=[f"{RES}/{m}/paper_circuits/{op}.parquet" for m in stage_models("localization") for op in OPS],
        heuristics=[f"{RES}/{m}/heuristics/{op}.parquet" for m in stage_models("localization") for op in OPS],
        prompt_knockouts=[f"{RES}/{m}/heuristics/{op}_prompt_knockout.parquet" for m in stage_models("localization")
                          for op in OPS],
    output:
        html=f"{RES}/report.html",
    params:
        config=without_performance(CFG),
        figures_dir=f"{RES}/figures",
        captions=read_captions(Path(workflow.basedir) / "workflow/report"),  # texts, not a path: relocatable
        code=script_code("report"),
    log:
        f"{RES}/logs/report/all.log",
    benchmark:
        f"{RES}/benchmarks/report/all.tsv"
    script:
        "../scripts/report.py"
