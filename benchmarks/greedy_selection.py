"""Greedy selection speed at Llama-3-8B size: :meth:`Graph.select_greedy` against the loop it replaced.

    python -m benchmarks.greedy_selection                        # Llama-3-8B shape, n = 100 … 100000
    python -m benchmarks.greedy_selection --baseline-max 100 --sizes 100 1000 --output /tmp/greedy.md

The graph has the shape of Llama-3-8B (32 layers, 32 query heads, 8 key/value heads, sequential blocks: 1057
upstream nodes, 1569 downstream inputs, 805,681 valid edges) and standard-normal random scores. Each
(algorithm, n) runs in a fresh process: wall time is the best of ``--repeat`` runs, peak memory the process's peak
RSS while selecting minus its peak before (the graph itself). The baseline (one argmax over every edge per chosen
edge) runs only up to ``--baseline-max`` edges; both must choose the same edges.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import in_fresh_process, peak_rss_gib, write_report
from circuitflow.circuits.graph import Graph


def baseline_greedy(graph: Graph, n: int, absolute: bool = True) -> torch.Tensor:
    """The greedy selection before the heap (``Graph.select_greedy`` up to commit 57f86a1), returning the chosen edge
    mask: each step, the argmax (first maximum in flat order) over every valid, not yet chosen edge whose reader
    belongs to the logits or to a node already in the circuit; it stops when only ``-inf`` remains."""
    ranked = graph._ranked(absolute)
    owner = graph.down_owner()
    in_nodes = torch.zeros(graph.n_up + 1, dtype=torch.bool)
    in_nodes[-1] = True
    chosen = torch.zeros_like(graph.valid)
    for _ in range(min(n, graph.n_valid_edges)):
        reachable = (owner & in_nodes[None, :]).any(1)
        candidates = ranked.masked_fill(chosen | ~reachable[None, :], -math.inf).flatten()
        best = int(candidates.argmax())
        if candidates[best] == -math.inf:
            break
        up, down = divmod(best, graph.n_down)
        chosen[up, down] = True
        in_nodes[up] = True
    return chosen


def random_graph(shape: tuple[int, int, int], seed: int = 0) -> Graph:
    """A sequential-block graph of ``shape`` (layers, heads, key/value heads) with standard-normal scores."""
    graph = Graph.empty(*shape, parallel=False)
    graph.scores = torch.randn(graph.n_up, graph.n_down, generator=torch.Generator().manual_seed(seed)) * graph.valid
    return graph



def measure(algorithm: str, shape: tuple[int, int, int], n: int, repeat: int, threads: int | None) -> dict:
    """Run one algorithm ``repeat`` times (in a fresh process): best wall seconds, extra peak RSS GiB, and the
    chosen edges (flat indices) to compare."""
    if threads is not None:
        torch.set_num_threads(threads)
    graph = random_graph(shape)
    before = peak_rss_gib()
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        chosen = baseline_greedy(graph, n) if algorithm == "baseline" else graph.select_greedy(n).in_graph
        seconds.append(time.perf_counter() - start)
    return dict(seconds=min(seconds), peak_gib=peak_rss_gib() - before, edges=chosen.flatten().nonzero().flatten())



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000, 100000], help="edges to choose")
    parser.add_argument("--baseline-max", type=int, default=1000, help="largest n the baseline runs at")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every run")
    parser.add_argument("--note", default="", help="about the machine, for the report (e.g. shared with other jobs)")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("greedy_selection_cpu.md"))
    args = parser.parse_args()
    shape = (args.layers, args.heads, args.kv_heads)
    load = os.getloadavg()[0]
    graph = Graph.empty(*shape, parallel=False)
    rows = ["| n | heap s | heap peak GiB | baseline s | baseline peak GiB | speed-up |",
            "| --- | --- | --- | --- | --- | --- |"]
    for n in args.sizes:
        heap = in_fresh_process(measure, "heap", shape, n, args.repeat, args.threads)
        row = f"| {n} | {heap['seconds']:.3f} | {heap['peak_gib']:.3f} |"
        if n <= args.baseline_max:
            base = in_fresh_process(measure, "baseline", shape, n, args.repeat, args.threads)
            if not torch.equal(base["edges"], heap["edges"]):
                raise SystemExit(f"n={n}: the heap and the baseline chose different edges")
            row += f" {base['seconds']:.3f} | {base['peak_gib']:.3f} | {base['seconds'] / heap['seconds']:.0f}× |"
        else:
            row += " – | – | – |"
        rows.append(row)
        print(row, flush=True)
    threads = args.threads or torch.get_num_threads()
    text = [
        "# Greedy selection at Llama-3-8B size — CPU",
        "",
        f"- Command: `{shlex.join(['python', '-m', 'benchmarks.greedy_selection', *sys.argv[1:]])}`",
        f"- Graph: {args.layers} layers, {args.heads} query heads, {args.kv_heads} key/value heads, sequential blocks: "
        f"{graph.n_up} upstream nodes × {graph.n_down} downstream inputs = {graph.n_up * graph.n_down:,} entries, "
        f"{graph.n_valid_edges:,} valid edges; standard-normal scores, absolute ranking.",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.machine()}{args.note and ', ' + args.note}), "
        f"load average {load:.1f} at the start, torch {torch.__version__}, {threads} torch threads, "
        f"{datetime.date.today()}.",
        "",
        "heap: `Graph.select_greedy` (one sort of every downstream input's edges, then a heap of each reachable "
        "input's best remaining edge). baseline: the loop it replaced (an argmax over all edges per chosen edge), run "
        f"only up to n = {args.baseline_max}; both chose the same edges at every n where both ran. Wall seconds: best "
        f"of {args.repeat}, each algorithm and n in a fresh process; peak GiB: that process's peak RSS while "
        "selecting above its peak after building the graph.",
        "",
        *rows,
        "",
    ]
    write_report(args.output, text)


if __name__ == "__main__":
    main()
