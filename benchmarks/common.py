"""What the CPU benchmarks share: peak memory of a process, a measurement in a fresh process, the written report."""

from __future__ import annotations

import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a spawned process, so that its peak RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def write_report(path: Path, lines: list[str]) -> None:
    """Write a benchmark's markdown report and say where."""
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
