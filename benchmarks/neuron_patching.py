"""Exact per-neuron patching of one full MLP layer: the original code's loop (one forward per neuron) vs ours
(many neurons per forward, stacked in the batch), and IE maps (all heads and MLPs × 4 positions) vs the floor.

    python -m benchmarks.neuron_patching --shape small --device cpu
    python -m benchmarks.neuron_patching --shape pythia-1.4b --device cuda      # the issue's GPU run (8192 neurons)

Random model of the given shape (no download), 50 prompt pairs of 5 tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.circuit_engine import build_config, sync
from circuitflow.circuits import PairBatch, Tracer
from circuitflow.localization.neuron_scores import exact_neuron_effects
from circuitflow.localization.patching import component_sites, patch_sites, site_activations
from circuitflow.metrics import ie
from circuitflow.models import ModelHandle, load_bridge


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--naive-neurons", type=int, default=256, help="neurons timed in the naive loop")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    from circuitflow.toy import build_tokenizer

    config = build_config(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
        build_tokenizer(99).save_pretrained(tmp)
        bridge = load_bridge(ModelHandle("bench", tmp), args.device, args.dtype)
    tracer = Tracer(bridge)
    gen = torch.Generator().manual_seed(0)
    v = config.vocab_size
    batch = PairBatch(torch.randint(0, v, (50, 5), generator=gen), torch.randint(0, v, (50, 5), generator=gen),
                      torch.randint(0, v, (50, 2), generator=gen), torch.full((50,), 5)).to(args.device)
    layer, d_mlp = config.num_hidden_layers // 2, config.intermediate_size
    _, _, post_c = site_activations(tracer, batch.corrupt)
    clean = bridge(batch.clean)

    def naive(n_neurons: int) -> None:  # the original research code: one forward pass per neuron
        for neuron in range(n_neurons):
            def hook(tensor, hook, neuron=neuron):
                tensor[:, -1, neuron] = post_c[layer][:, -1, neuron]
                return tensor

            with bridge.hooks(fwd_hooks=[(tracer.anatomy.layers[layer].hooks["mlp_post"], hook)]):
                ie(bridge(batch.clean), clean, batch.lengths, batch.labels)

    def timed(fn) -> float:
        sync(args.device)
        start = time.perf_counter()
        fn()
        sync(args.device)
        return time.perf_counter() - start

    with torch.no_grad():
        t_naive = timed(lambda: naive(args.naive_neurons)) * d_mlp / args.naive_neurons
        t_ours = timed(lambda: exact_neuron_effects(tracer, [batch], layer))
        sites = component_sites(config.num_hidden_layers, config.num_attention_heads, [1, 2, 3, 4])
        t_ie = timed(lambda: patch_sites(tracer, batch, sites["layer"], sites["unit"], sites["pos"], sites["kind"],
                                         {"ie": ie}))
        n_sites = len(sites["layer"])
        t_floor = timed(lambda: [bridge(batch.clean.repeat(min(n_sites, 4096 // 50), 1))
                                 for _ in range(-(-n_sites // (4096 // 50)))])
    print(f"| exact patching of layer {layer} ({d_mlp} neurons), naive loop (extrapolated from "
          f"{args.naive_neurons}) | {t_naive:.2f} s |")
    print(f"| exact patching of layer {layer}, ours (vectorized) | {t_ours:.2f} s ({t_naive / t_ours:.1f}x faster) |")
    print(f"| IE map: {n_sites} sites (heads + MLPs × 4 positions) | {t_ie:.2f} s; floor (same rows, plain forward) "
          f"{t_floor:.2f} s; ratio {t_ie / t_floor:.2f} |")


if __name__ == "__main__":
    main()
