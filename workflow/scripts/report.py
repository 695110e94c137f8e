"""The report's headline tables and provenance, as small HTML pages that `snakemake --report` shows."""
from circuitflow.logs import log_to
from circuitflow.report import (TABLE_TITLES, device_description, provenance_page, summary_tables, table_page,
                               write_page)

with log_to(snakemake.log[0]) as log:
    i, o = snakemake.input, snakemake.output
    tables = summary_tables(i.accuracy, i.areas, i.paper_circuits, i.heuristics, i.prompt_knockouts,
                            feature_quality=i.feature_quality, feature_scores=i.feature_scores,
                            feature_ablation=i.feature_ablation, feature_comparison=i.feature_comparison)
    for name, title in TABLE_TITLES.items():
        write_page(o[name], table_page(title, tables[name]))
    device = device_description(snakemake.params.device)
    write_page(o.provenance, provenance_page(i.accuracy, snakemake.params.config, device))
    log.info("%d tables and the provenance -> %s", len(TABLE_TITLES), o.provenance)
