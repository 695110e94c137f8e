"""Summary of a workflow run on a GPU (benchmarks/gpu_workflow.sh): the device, every job's rule and time from its
benchmark file, and the table columns holding ±inf (an error) or NaN.

    python -m benchmarks.gpu_workflow RESULTS --config FILE --rc N --wall-s S --out DIR   # writes gpu_workflow.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from circuitflow.resources import measured_resources


def non_finite_columns(results: Path) -> tuple[list[str], list[str]]:
    """(``table:column`` holding ±inf, ``table:column`` holding NaN) over every table outside scratch folders. Some
    columns are NaN by design where a value was not computed (``neurons.exact_ie`` outside the exactly patched
    layers, ``training_log.train_loss`` at step 0, heuristic overlaps of a checkpoint without final heuristics)."""
    infinite, missing = [], []
    for path in sorted(results.rglob("*.parquet")):
        if ".partial" in path.parts:
            continue
        numbers = pd.read_parquet(path).select_dtypes("number").astype(np.float64)
        name = str(path.relative_to(results))
        infinite += [f"{name}:{c}" for c in numbers if np.isinf(numbers[c]).any()]
        missing += [f"{name}:{c}" for c in numbers if numbers[c].isna().any()]
    return infinite, missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--config", required=True)
    parser.add_argument("--rc", type=int, required=True)
    parser.add_argument("--wall-s", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    tables = sorted(p for p in args.results.rglob("*.parquet") if ".partial" not in p.parts)
    infinite, missing = non_finite_columns(args.results) if args.results.exists() else ([], [])
    jobs = measured_resources(args.results / "benchmarks") if (args.results / "benchmarks").exists() else None
    lines = [f"# The workflow on a GPU: {device}", "",
             f"`{args.config}` with `device: cuda`; snakemake exit {args.rc}; {args.wall_s:.0f} s wall; "
             f"torch {torch.__version__}; {len(tables)} tables; columns with ±inf: {infinite or 'none'}; "
             f"with NaN (by design where not computed, see non_finite_columns): {missing or 'none'}.", ""]
    if jobs is not None and len(jobs):
        lines += ["| rule | jobs | longest job s | peak RSS MB |", "| --- | --- | --- | --- |"]
        lines += [f"| {r.rule} | {r.jobs} | {r.max_s:.1f} | {r.max_rss_mb:.0f} |" for r in jobs.itertuples()]
    text = "\n".join(lines) + "\n"
    (args.out / "gpu_workflow.md").write_text(text)
    print(text)
    if args.rc or infinite:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
