"""The run's HTML report, from its figures and tables."""
from circuitflow.logs import log_to
from circuitflow.report import summary_tables, write_report

with log_to(snakemake.log[0]) as log:
    i, p = snakemake.input, snakemake.params
    tables = summary_tables(i.accuracy, i.areas, i.paper_circuits, i.heuristics, i.prompt_knockouts)
    write_report(snakemake.output.html, i.figures, p.figures_dir, p.captions, tables, p.config)
    log.info("%d figures, %d tables -> %s", len(i.figures), len(tables), snakemake.output.html)
