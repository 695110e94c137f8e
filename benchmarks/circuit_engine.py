"""Circuit-engine speed against the hardware floor (the plain HF model's frozen forward+backward passes).

    python benchmarks/circuit_engine.py --shape pythia-1.4b --dtype float32 --device cuda   # the issue's GPU run
    python benchmarks/circuit_engine.py --shape llama-3-8b --dtype bfloat16 --device cuda --batch 16
    python benchmarks/circuit_engine.py --shape small --device cpu                          # what CI machines can do

Builds a random model of the given shape (no download), 256 prompt pairs of 5 tokens, batch 64, and reports per
method: wall time, peak GPU memory, the number of forward/backward passes it needs, and the ratio to the floor =
the same passes of the plain HF model (parameters frozen, gradient w.r.t. the input embeddings).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from circuitflow.circuits import PairBatch, Tracer, attribute, evaluate_masks
from circuitflow.metrics import logit_diff
from circuitflow.models import ModelHandle, load_bridge, load_hf_model

SHAPES = {  # GPT-NeoX (Pythia) shapes, vocab 50304, rotary 0.25, parallel attention; llama-3-8b: GQA 32/8 heads
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024),
    "pythia-1.4b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192),
    "llama-3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=128256),
}


def build_config(shape: str):
    from transformers import GPTNeoXConfig, LlamaConfig

    if shape.startswith("llama"):
        return LlamaConfig(max_position_embeddings=64, **SHAPES[shape])
    return GPTNeoXConfig(vocab_size=50304, rotary_pct=0.25, use_parallel_residual=True, max_position_embeddings=64,
                         **SHAPES[shape])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    from circuitflow.toy import build_tokenizer

    config = build_config(args.shape)
    vocab = config.vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
        build_tokenizer(99).save_pretrained(tmp)
        handle = ModelHandle("bench", tmp)
        hf = load_hf_model(handle, args.device, args.dtype)
        bridge = load_bridge(handle, args.device, args.dtype)
    gen = torch.Generator().manual_seed(0)
    batches = [PairBatch(torch.randint(0, vocab, (args.batch, 5), generator=gen),
                         torch.randint(0, vocab, (args.batch, 5), generator=gen),
                         torch.randint(0, vocab, (args.batch, 2), generator=gen), torch.full((args.batch,), 5))
               for _ in range(args.pairs // args.batch)]

    def hf_passes(n_fwd: int, n_bwd: int) -> None:
        for batch in batches:
            tokens = batch.clean.to(args.device)
            for _ in range(n_fwd):
                with torch.no_grad():
                    hf(tokens)
            for _ in range(n_bwd):
                embeds = hf.get_input_embeddings()(tokens).detach().requires_grad_(True)
                hf(inputs_embeds=embeds).logits[:, -1, 0].sum().backward()

    tracer = Tracer(bridge)
    n_layers = config.num_hidden_layers
    runs = {  # method: (callable, forward-only passes, forward+backward passes) per batch
        "EAP": (lambda: attribute(bridge, batches, logit_diff, "EAP", tracer=tracer, progress=False), 2, 1),
        "EAP-IG-inputs (5)": (lambda: attribute(bridge, batches, logit_diff, "EAP-IG-inputs", ig_steps=5,
                                                tracer=tracer, progress=False), 2, 5),
        "clean-corrupted": (lambda: attribute(bridge, batches, logit_diff, "clean-corrupted", tracer=tracer,
                                              progress=False), 2, 2),
        "EAP-IG-activations (5)": (lambda: attribute(bridge, batches, logit_diff, "EAP-IG-activations", ig_steps=5,
                                                     tracer=tracer, progress=False), 2, 5 * (2 * n_layers + 1)),
        "circuit evaluation": (lambda: evaluate_masks(tracer, tracer.shape.valid[None] & (torch.rand(
            tracer.shape.valid.shape, generator=gen) < 0.1), batches, logit_diff), 3, 0),
    }
    hf_passes(1, 1)  # warm-up
    print("| method | wall s | peak GiB | passes/batch (fwd, fwd+bwd) | HF floor s | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (fn, n_fwd, n_bwd) in runs.items():
        floor, _ = timed(lambda: hf_passes(n_fwd, n_bwd), args.device)
        wall, peak = timed(fn, args.device)
        print(f"| {name} | {wall:.3f} | {peak:.2f} | {n_fwd}, {n_bwd} | {floor:.3f} | {wall / floor:.2f} |", flush=True)


if __name__ == "__main__":
    main()
