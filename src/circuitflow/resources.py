"""Cluster resources from measurements: the ``benchmark:`` files every job writes (``results/benchmarks/{rule}/``:
wall seconds ``s``, peak resident memory ``max_rss`` in MB) turned into the SLURM profile's ``set-resources``.

    python -m circuitflow.resources results/benchmarks [--margin 2]   # prints a set-resources block
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd


def measured_resources(folder: Path | str, margin: float = 2.0) -> pd.DataFrame:
    """Per rule (one subfolder of ``folder``): ``jobs``, the longest wall time ``max_s`` and the largest ``max_rss_mb``
    over its benchmark files, and the suggested ``runtime`` (minutes: ``margin`` × the longest, at least 1) and
    ``mem_mb`` (``margin`` × the largest, at least 1000)."""
    rows = []
    for rule_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        files = sorted(rule_dir.glob("*.tsv"))
        if not files:
            continue
        runs = pd.concat([pd.read_csv(f, sep="\t", na_values=["-", "NA"]) for f in files], ignore_index=True)
        max_s, max_rss = float(runs["s"].max()), float(runs["max_rss"].max())
        rss = 0.0 if math.isnan(max_rss) else max_rss
        rows.append(dict(rule=rule_dir.name, jobs=len(files), max_s=max_s, max_rss_mb=max_rss,
                         runtime=max(1, math.ceil(margin * max_s / 60)), mem_mb=max(1000, math.ceil(margin * rss))))
    return pd.DataFrame(rows, columns=["rule", "jobs", "max_s", "max_rss_mb", "runtime", "mem_mb"])


def set_resources_yaml(table: pd.DataFrame) -> str:
    """The ``set-resources:`` block of a Snakemake profile for a :func:`measured_resources` table."""
    lines = ["set-resources:"]
    for row in table.itertuples():
        lines += [f"  {row.rule}:  # {row.jobs} job(s), longest {row.max_s:.0f} s, peak {row.max_rss_mb:.0f} MB",
                  f"    runtime: {row.runtime}", f"    mem_mb: {row.mem_mb}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SLURM set-resources from a run's Snakemake benchmark files")
    parser.add_argument("folder", type=Path, help="the run's benchmarks folder, e.g. results/benchmarks")
    parser.add_argument("--margin", type=float, default=2.0, help="factor over the largest measurement")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"error: {args.folder} is not a folder; pass the run's results/benchmarks")
    print(set_resources_yaml(measured_resources(args.folder, args.margin)), end="")


if __name__ == "__main__":
    main()
