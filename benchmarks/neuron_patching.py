"""Exact per-neuron patching of one full MLP layer: the original code's loop (one forward per neuron) vs ours
(many neurons per forward, stacked in the batch), and IE maps (all heads and MLPs × 4 positions) vs the floor.

    python -m benchmarks.neuron_patching --shape small --device cpu
    python -m benchmarks.neuron_patching --shape pythia-1.4b --device cuda      # the issue's GPU run (8192 neurons)
    python -m benchmarks.neuron_patching --shape pythia-1.4b --layers 4 --device cpu --threads 1 --naive-neurons 8 \
        --our-neurons 80 --ie-sites 40 --max-rows 2048                         # CPU check at full width

Random model of the given shape (no download; ``--layers`` overrides its depth), 50 prompt pairs of 5 tokens.
``--our-neurons`` / ``--ie-sites`` time only a subset (the neuron patching extrapolated to the whole layer like the
naive loop; the IE map on evenly spaced sites against a floor of as many rows) where the full run is too slow;
``--max-rows`` caps the rows per forward of both (the metric's float64 ``[rows, vocab]`` tensors bound CPU memory).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch import Tensor

from benchmarks.circuit_engine import build_config, peak_gib, sync
from circuitflow.circuits import PairBatch, Tracer
from circuitflow.localization.patching import (component_sites, last_position_neuron_patching, patch_sites,
                                               site_activations)
from circuitflow.metrics import ie
from circuitflow.models import ModelHandle, load_bridge, resolve_dtype


def naive_neuron_patching(tracer: Tracer, batch: PairBatch, layer: int, post_corrupt: list[Tensor],
                          n_neurons: int) -> None:
    """The original research code: one forward pass per neuron, patching each of the first ``n_neurons`` of
    ``layer`` at the last position with its ``post_corrupt[layer]`` ``[b, pos, d_mlp]`` value, IE of each."""
    clean = tracer.bridge(batch.clean)
    for neuron in range(n_neurons):
        def hook(tensor, hook, neuron=neuron):
            tensor[:, -1, neuron] = post_corrupt[layer][:, -1, neuron]
            return tensor

        with tracer.bridge.hooks(fwd_hooks=[(tracer.anatomy.layers[layer].hooks["mlp_post"], hook)]):
            ie(tracer.bridge(batch.clean), clean, batch.lengths, batch.labels)


def ie_map_sites(n_layers: int, n_heads: int, n_sites: int | None = None) -> tuple[dict[str, Tensor], int]:
    """(sites, number of all sites) of the IE map, every head and MLP × 4 positions; ``n_sites`` keeps that many,
    evenly spaced."""
    sites = component_sites(n_layers, n_heads, [1, 2, 3, 4])
    n_all = len(sites["layer"])
    if n_sites is not None and n_sites < n_all:
        keep = torch.linspace(0, n_all - 1, n_sites).round().long()
        sites = {k: v[keep] for k, v in sites.items()}
    return sites, n_all


def ie_map_floor(bridge, tokens: Tensor, n_sites: int, max_rows: int) -> None:
    """The IE map's floor: plain forwards of as many stacked rows (``n_sites`` copies of ``tokens`` ``[b, pos]``) in
    chunks of at most ``max_rows``."""
    per_pass = max(1, max_rows // len(tokens))
    for start in range(0, n_sites, per_pass):
        bridge(tokens.repeat(min(per_pass, n_sites - start), 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--naive-neurons", type=int, default=256, help="neurons timed in the naive loop")
    parser.add_argument("--our-neurons", type=int, default=None, help="neurons timed in ours (default: all)")
    parser.add_argument("--ie-sites", type=int, default=None, help="IE-map sites timed (default: all)")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="rows per forward for ours and the IE map (default: the library's 8192 and 4096)")
    parser.add_argument("--layers", type=int, default=None, help="override the shape's number of layers")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from circuitflow.toy import build_tokenizer

    config = build_config(args.shape, args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(args.dtype)).save_pretrained(tmp)
        build_tokenizer(99).save_pretrained(tmp)
        bridge = load_bridge(ModelHandle("bench", tmp), args.device, args.dtype)
    tracer = Tracer(bridge)
    gen = torch.Generator().manual_seed(0)
    v = config.vocab_size
    batch = PairBatch(torch.randint(0, v, (50, 5), generator=gen), torch.randint(0, v, (50, 5), generator=gen),
                      torch.randint(0, v, (50, 2), generator=gen), torch.full((50,), 5)).to(args.device)
    layer, d_mlp = config.num_hidden_layers // 2, config.intermediate_size
    n_ours = min(args.our_neurons or d_mlp, d_mlp)
    neuron_rows, ie_rows = (args.max_rows, args.max_rows) if args.max_rows else (8192, 4096)
    _, _, post_c = site_activations(tracer, batch.corrupt)

    def ours(n_neurons: int) -> None:  # many neurons per forward, last token only on the clean prefix's cache
        last_position_neuron_patching(tracer, batch, layer, torch.arange(n_neurons), ie, max_rows=neuron_rows)

    def timed(fn) -> float:
        sync(args.device)
        start = time.perf_counter()
        fn()
        sync(args.device)
        return time.perf_counter() - start

    with torch.no_grad():  # each row is printed as soon as it is measured
        t_naive = timed(lambda: naive_neuron_patching(tracer, batch, layer, post_c, args.naive_neurons))
        t_naive *= d_mlp / args.naive_neurons
        print(f"| exact patching of layer {layer} ({d_mlp} neurons), naive loop (extrapolated from "
              f"{args.naive_neurons}) | {t_naive:.2f} s |", flush=True)
        t_ours = timed(lambda: ours(n_ours))  # n_ours == d_mlp: = exact_neuron_effects(tracer, [batch], layer)
        if n_ours < d_mlp:  # the fixed part (clean, corrupt and prefix passes) once, the per-neuron part scaled up
            t_fixed = timed(lambda: ours(1))
            t_ours = t_fixed + (t_ours - t_fixed) * d_mlp / n_ours
        how = "" if n_ours == d_mlp else f"; extrapolated from {n_ours}"
        print(f"| exact patching of layer {layer}, ours (vectorized{how}) | {t_ours:.2f} s ({t_naive / t_ours:.1f}x "
              f"faster) |", flush=True)
        sites, n_all = ie_map_sites(config.num_hidden_layers, config.num_attention_heads, args.ie_sites)
        t_ie = timed(lambda: patch_sites(tracer, batch, sites["layer"], sites["unit"], sites["pos"], sites["kind"],
                                         {"ie": ie}, max_rows=ie_rows))
        n_sites = len(sites["layer"])
        t_floor = timed(lambda: ie_map_floor(bridge, batch.clean, n_sites, ie_rows))
    print(f"| IE map: {n_sites} of {n_all} sites (heads + MLPs × 4 positions) | {t_ie:.2f} s; floor (same rows, "
          f"plain forward) {t_floor:.2f} s; ratio {t_ie / t_floor:.2f} |")
    print(f"| peak memory ({'GPU allocated' if args.device.startswith('cuda') else 'process RSS'}) | "
          f"{peak_gib(args.device):.2f} GiB |")

if __name__ == "__main__":
    main()
