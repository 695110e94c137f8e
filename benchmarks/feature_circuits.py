"""Feature-circuit speed: dictionary training, activation collection, attribution graphs and their pruning.

    python -m benchmarks.feature_circuits --device cuda       # full: 1000 / 300 training steps, 12-layer graphs
    nice -n 5 python -m benchmarks.feature_circuits --train-steps 200 --train-steps-real 10 --collect-prompts 4096 \
        --layers 2 --note 'a development machine shared with other jobs'  # the CPU run in feature_circuits_cpu.md
    python -m benchmarks.feature_circuits --quick --output /tmp/features.md   # a few minutes: fewer steps and layers

Two shapes, both random GPT-NeoX models built from a config (no download) and random top-k dictionaries:

* ``toy``: the default toy model's shape (2 layers, d_model 64, 4 heads of 16, so hook_z is 64 wide, d_mlp 256, the
  toy tokenizer's 110 tokens), dictionaries of expansion 8 (512 features) and k 8, the prompt ``3+14=`` (4 tokens);
* ``pythia-160m``: Pythia-160m's width (d_model 768, 12 heads of 64, d_mlp 3072, 12 layers; the toy tokenizer's
  vocab, so the unembedding is tiny), expansion 8 (6144 features) and k 32, a 10-token prompt.

Measured: ``train_dictionary`` time per 1000 steps of a transcoder and an attention SAE on random normal activations
(batch 1024), timed over ``--train-steps`` (toy) and ``--train-steps-real`` steps, best of ``--repeat`` runs (the first
run in a process is the slowest), scaled to 1000 (steps cost the same apart from the AuxK loss, which runs only once a
feature has been dead for 50 batches: never on isotropic random data); ``collect_activations`` throughput on the toy
shape; and per attribution graph its nodes, targets (active features and logits: one backward row each), nonzero
edges, seconds for ``attribution_graph`` and for ``prune``, peak memory and ``completeness_error``. Each graph runs in
a fresh process, so each peak RSS is its own (CPU: peak RSS of that process, model and dictionaries included; GPU:
peak allocated while building the graph). Each graph is built twice in its process: without LEAP's Q and K edges
(``qk_edges=False``: the adjacency only) and with them (the default; two more backward passes per batch of attention
features), so the Q/K cost is their difference. ``train_dictionary`` trains on ``--device``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.circuit_engine import sync
from benchmarks.common import in_fresh_process, peak_rss_gib, write_report
from circuitflow.features import DictionaryInfo, DictionarySpec, SparseDictionary, attribution_graph, prune
from circuitflow.features.dictionary import SITES
from circuitflow.features.training import collect_activations, train_dictionary
from circuitflow.models import ModelHandle, load_bridge, resolve_dtype
from circuitflow.toy import build_tokenizer

MAX_NUMBER = 99  # the toy tokenizer's numbers: 4 special tokens + 100 numbers + 6 symbols = 110 tokens
SHAPES = {  # GPT-NeoX shapes (HF config fields), dictionary sizes and the graph prompt
    "toy": dict(config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
                expansion=8, k=8, prompt="3+14="),
    "pythia-160m": dict(config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=3072),
                        expansion=8, k=32, prompt="12+34=46;5+6="),
}
SITE_NAMES = {"mlp": "transcoder", "attn": "attention SAE"}



def random_bridge(config: dict, directory: Path, device: str, dtype: str):
    """``(bridge, tokenizer)``: a random GPT-NeoX of ``config`` (HF fields) with the toy tokenizer's vocab, saved to
    ``directory`` and loaded back with :func:`load_bridge` like any local model."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    tokenizer = build_tokenizer(MAX_NUMBER)
    torch.manual_seed(0)
    hf_config = GPTNeoXConfig(vocab_size=len(tokenizer), rotary_pct=0.25, use_parallel_residual=True,
                              max_position_embeddings=64, tie_word_embeddings=False, **config)
    AutoModelForCausalLM.from_config(hf_config, dtype=resolve_dtype(dtype)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return load_bridge(ModelHandle("bench", str(directory)), device=device, dtype=dtype), tokenizer


def random_dictionaries(n_layers: int, d_model: int, d_z: int, expansion: int, k: int, device: str,
                        dtype: torch.dtype, seed: int = 0) -> dict[str, SparseDictionary]:
    """Top-k transcoders (no skip, the pipeline's default) for every MLP and SAEs for every attention ``hook_z``,
    every parameter normal with standard deviation ``1 / sqrt(d)`` (outputs of the residual stream's scale)."""
    torch.manual_seed(seed)
    out = {}
    for layer in range(n_layers):
        for site, d in (("mlp", d_model), ("attn", d_z)):
            dictionary = SparseDictionary(DictionaryInfo(site, layer, "topk", k=k), d, d, expansion * d, dtype=dtype)
            for param in dictionary.parameters():
                torch.nn.init.normal_(param, std=d**-0.5)
            out[dictionary.info.name] = dictionary.to(device)
    return out


def training_seconds(d: int, site: str, expansion: int, k: int, steps: int, batch_size: int, dtype: str,
                     device: str) -> float:
    """Wall seconds of ``train_dictionary`` for ``steps`` steps of a ``site`` dictionary (d_in = d_out = ``d``) on
    ``4 · batch_size`` random normal activations (an SAE's targets are its inputs)."""
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(4 * batch_size, d, generator=gen).to(resolve_dtype(dtype))
    targets = inputs if site == "attn" else torch.randn(4 * batch_size, d, generator=gen).to(resolve_dtype(dtype))
    spec = DictionarySpec(expansion=expansion, k=k, steps=steps, batch_size=batch_size)
    sync(device)
    start = time.perf_counter()
    train_dictionary(inputs, targets, spec.info(site, 0), spec, progress=False, device=device)
    sync(device)
    return time.perf_counter() - start


def collection_throughput(n_prompts: int, device: str, dtype: str) -> tuple[float, int]:
    """``(tokens per second, tokens)`` of ``collect_activations`` for every toy dictionary (both sites, both layers)
    on ``n_prompts`` random 4-token prompts, batch 1024."""
    shape = SHAPES["toy"]
    with tempfile.TemporaryDirectory() as tmp:
        bridge, tokenizer = random_bridge(shape["config"], Path(tmp), device, dtype)
    tokens = torch.randint(0, len(tokenizer), (n_prompts, 4), generator=torch.Generator().manual_seed(0))
    infos = [DictionaryInfo(site, layer, "topk", k=shape["k"]) for site in SITES
             for layer in range(shape["config"]["num_hidden_layers"])]
    collect_activations(bridge, tokens[:8], infos)  # warm-up
    sync(device)
    start = time.perf_counter()
    collect_activations(bridge, tokens, infos, batch_size=1024)
    sync(device)
    return tokens.numel() / (time.perf_counter() - start), tokens.numel()


def graph_measurement(shape_name: str, layers: int | None, batch: int, device: str, dtype: str,
                      threads: int | None, qk_only: bool = False) -> dict:
    """One attribution graph of ``shape_name`` (``layers`` overrides its depth) with ``batch`` targets per backward,
    without and then with Q/K edges (``qk_only``: only with them, ``graph_s`` their total and no ``qk_s``), then
    :func:`prune` (0.8 / 0.98): sizes, seconds, peak memory and completeness error. Run in a fresh process."""
    if threads is not None:
        torch.set_num_threads(threads)
    shape = SHAPES[shape_name]
    config = shape["config"] | ({} if layers is None else {"num_hidden_layers": layers})
    with tempfile.TemporaryDirectory() as tmp:
        bridge, tokenizer = random_bridge(config, Path(tmp), device, dtype)
    d_model, d_z = bridge.cfg.d_model, bridge.cfg.n_heads * bridge.cfg.d_head
    dictionaries = random_dictionaries(config["num_hidden_layers"], d_model, d_z, shape["expansion"], shape["k"],
                                       device, resolve_dtype(dtype))
    before = peak_rss_gib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = {}
    for qk in (True,) if qk_only else (False, True):
        sync(device)
        start = time.perf_counter()
        graph = attribution_graph(bridge, tokenizer, shape["prompt"], dictionaries, batch=batch, qk_edges=qk)
        sync(device)
        seconds[qk] = time.perf_counter() - start
    graph_peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else peak_rss_gib()
    start = time.perf_counter()
    node_mask, edge_mask = prune(graph)
    prune_s = time.perf_counter() - start
    n_targets = len(graph.index("feature")) + len(graph.index("logit"))
    return dict(shape=shape_name, layers=config["num_hidden_layers"], d_model=d_model, tokens=len(graph.tokens),
                batch=batch, nodes=graph.n_nodes, targets=n_targets, backwards=-(-n_targets // batch),
                qk_targets=len(graph.qk_targets), edges=int((graph.adjacency != 0).sum()),
                kept_nodes=int(node_mask.sum()), kept_edges=int(edge_mask.sum()),
                graph_s=seconds[True] if qk_only else seconds[False],
                **({} if qk_only else {"qk_s": seconds[True] - seconds[False]}), prune_s=prune_s, rss_before_gib=before,
                graph_peak_gib=graph_peak, completeness_error=graph.completeness_error)



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", help="where the models run and the dictionaries train")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quick", action="store_true",
                        help="a fast check: 100 toy / 3 real-width training steps once, 1024 prompts, real width at 2 "
                             "layers with batch 32 only")
    parser.add_argument("--train-steps", type=int, default=1000, help="toy training steps timed")
    parser.add_argument("--train-steps-real", type=int, default=300, help="real-width training steps timed")
    parser.add_argument("--repeat", type=int, default=2, help="training times are the best of this many runs")
    parser.add_argument("--collect-prompts", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=None, help="real-width graph depth (default: all 12 layers)")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128], help="real-width graph batches")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every process")
    parser.add_argument("--note", default="", help="about the machine, for the report (e.g. shared with other jobs)")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("feature_circuits_cpu.md"))
    args = parser.parse_args()
    if args.quick:
        args.train_steps, args.train_steps_real, args.repeat, args.collect_prompts = 100, 3, 1, 1024
        args.layers, args.batches = 2, [32]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    began = time.perf_counter()

    training = ["| shape | dictionary | d | features | k | batch | steps timed | s per 1000 steps |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, steps in (("toy", args.train_steps), ("pythia-160m", args.train_steps_real)):
        shape = SHAPES[name]
        d = shape["config"]["hidden_size"]  # d_z = d_model in both shapes
        for site in SITES:
            seconds = min(training_seconds(d, site, shape["expansion"], shape["k"], steps, 1024, args.dtype,
                                           args.device) for _ in range(args.repeat))
            training.append(f"| {name} | {SITE_NAMES[site]} | {d} | {shape['expansion'] * d} | {shape['k']} | 1024 | "
                            f"{steps} | {seconds / steps * 1000:.1f} |")
            print(training[-1], flush=True)

    tokens_per_s, n_tokens = collection_throughput(args.collect_prompts, args.device, args.dtype)
    print(f"collect_activations: {tokens_per_s:,.0f} tokens/s over {n_tokens} tokens", flush=True)

    graphs = ["| shape | layers | tokens | batch | nodes | targets | backwards | edges | attribution_graph s | "
              "s per backward | Q/K targets | + Q/K s | prune s | kept nodes / edges | peak GiB (before graph) | "
              "completeness error |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    runs = [("toy", None, 64), *(("pythia-160m", args.layers, batch) for batch in args.batches)]
    for name, layers, batch in runs:
        r = in_fresh_process(graph_measurement, name, layers, batch, args.device, args.dtype, args.threads)
        graphs.append(f"| {name} | {r['layers']} | {r['tokens']} | {r['batch']} | {r['nodes']:,} | {r['targets']:,} | "
                      f"{r['backwards']} | {r['edges']:,} | {r['graph_s']:.2f} | {r['graph_s'] / r['backwards']:.3f} | "
                      f"{r['qk_targets']:,} | {r['qk_s']:.2f} | {r['prune_s']:.2f} | {r['kept_nodes']:,} / {r['kept_edges']:,} | {r['graph_peak_gib']:.2f} "
                      f"({r['rss_before_gib']:.2f}) | {r['completeness_error']:.1e} |")
        print(graphs[-1], flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    threads = args.threads or torch.get_num_threads()
    text = [
        "# Feature circuits — CPU" if args.device == "cpu" else f"# Feature circuits — {args.device}",
        "",
        f"- Command: `{shlex.join(['python', '-m', 'benchmarks.feature_circuits', *sys.argv[1:]])}`",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.machine()}{args.note and ', ' + args.note}), "
        f"load average {load:.1f} at the start, torch {torch.__version__}, {threads} torch threads, "
        f"device {args.device}, {args.dtype}, commit {commit}, {datetime.date.today()}; "
        f"the whole run took {time.perf_counter() - began:.0f} s.",
        "",
        f"## Dictionary training (`train_dictionary`, random normal activations, on {args.device})",
        "",
        f"Seconds per 1000 steps: the time of the steps timed (best of {args.repeat} runs) scaled to 1000; a topk "
        "dictionary's AuxK loss never runs on these isotropic activations (no feature stays dead for 50 batches).",
        "",
        *training,
        "",
        f"`collect_activations` (toy shape, all 4 dictionaries' hooks, batch 1024 prompts of 4 tokens): "
        f"**{tokens_per_s:,.0f} tokens/s** over {n_tokens:,} tokens.",
        "",
        "## Attribution graphs (`attribution_graph`, then `prune` at 0.8 / 0.98)",
        "",
        "Random GPT-NeoX models and random top-k dictionaries at every MLP and attention layer; each row in a fresh "
        "process. targets: active features and logits, one backward row each; backwards: ⌈targets / batch⌉; edges: "
        "nonzero adjacency entries; attribution_graph s: without Q/K edges; s per backward: that / backwards (its "
        "fixed costs included); Q/K targets: attention-SAE features (the rows of the Q and K matrices); + Q/K s: "
        "the extra seconds of the same graph with Q/K edges (`qk_edges=True`, the default). Peak "
        "GiB: the process's peak RSS after the graph (on a GPU: peak allocated during it), in brackets its peak "
        "before the graph (model and dictionaries built). Completeness error: the largest |Σ inputs + bias − value| "
        "over targets relative to the largest |value|.",
        "",
        *graphs,
        "",
    ]
    write_report(args.output, text)


if __name__ == "__main__":
    main()
