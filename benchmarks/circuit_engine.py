"""Circuit-engine speed against the hardware floor (the plain HF model's frozen forward+backward passes).

    python benchmarks/circuit_engine.py --shape pythia-1.4b --dtype float32 --device cuda   # the issue's GPU run
    python benchmarks/circuit_engine.py --shape llama-3-8b --dtype bfloat16 --device cuda --batch 16
    python benchmarks/circuit_engine.py --shape small --device cpu                          # what CI machines can do
    python benchmarks/circuit_engine.py --shape llama-3-8b --layers 2 --dtype bfloat16 --device cpu --threads 1 \
        --pairs 16 --batch 16 --methods EAP circuit-evaluation                              # full width, 2 layers

Builds a random model of the given shape (no download; ``--layers`` overrides its depth), 256 prompt pairs of 5
tokens, batch 64, and reports per method: wall time, peak memory (GPU: peak allocated while the method ran; CPU:
the process's peak RSS so far, which never decreases), the number of forward/backward passes it needs, and the
ratio to the floor = the same passes of the plain HF model (parameters frozen, gradient w.r.t. the input embeddings).
"""

from __future__ import annotations

import argparse
import copy
import resource
import tempfile
import time
from pathlib import Path

import torch

from circuitflow.circuits import PairBatch, Tracer, attribute, evaluate_masks
from circuitflow.metrics import logit_diff
from circuitflow.models import ModelHandle, load_bridge, resolve_dtype

SHAPES = {  # GPT-NeoX (Pythia) shapes, vocab 50304, rotary 0.25, parallel attention; llama-3-8b: GQA 32/8 heads;
    # tiny and llama-tiny: the GPU check's --smoke run
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024),
    "pythia-1.4b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192),
    "llama-3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=128256),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=512),
    "llama-tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=256, vocab_size=512),
}


METHODS = ("EAP", "EAP-IG-inputs", "clean-corrupted", "EAP-IG-activations", "circuit-evaluation")


def build_config(shape: str, layers: int | None = None):
    """The HF config of ``shape``; ``layers`` overrides its number of layers (full width, fewer layers)."""
    from transformers import GPTNeoXConfig, LlamaConfig

    sizes = SHAPES[shape] | ({} if layers is None else {"num_hidden_layers": layers})
    if shape.startswith("llama"):
        return LlamaConfig(max_position_embeddings=64, **sizes)
    return GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, max_position_embeddings=64,
                         **{"vocab_size": 50304} | sizes)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float:
    """GPU: peak allocated memory since the last reset. CPU: the process's peak RSS so far (Linux KiB; cumulative)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, device: str) -> tuple[float, float]:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start, peak_gib(device)


def random_models(config, dtype: str, device: str, directory: Path):
    """(plain HF model, bridge around an exact copy of it) with random weights of ``config``, built on ``device``.

    No weights touch the disk: ``directory`` receives only the config and a tokenizer (the handle the bridge boots
    from), so even Llama-3-8B's width is built in seconds on a GPU. The HF model is the floor's; the bridge wraps a
    deep copy, so its hooks never slow the floor down.
    """
    from transformers import AutoModelForCausalLM

    from circuitflow.toy import build_tokenizer

    config.save_pretrained(directory)
    build_tokenizer(99).save_pretrained(directory)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype), attn_implementation="eager")
    hf.eval().requires_grad_(False)
    bridge = load_bridge(ModelHandle("bench", str(directory)), device=device, dtype=dtype, hf_model=copy.deepcopy(hf))
    return hf, bridge


def random_pair_batches(vocab: int, pairs: int, batch: int, generator: torch.Generator) -> list[PairBatch]:
    """``pairs // batch`` batches of random 5-token prompt pairs with random answer labels."""
    return [PairBatch(torch.randint(0, vocab, (batch, 5), generator=generator),
                      torch.randint(0, vocab, (batch, 5), generator=generator),
                      torch.randint(0, vocab, (batch, 2), generator=generator), torch.full((batch,), 5))
            for _ in range(pairs // batch)]


def hf_passes(hf, batches: list[PairBatch], device: str, n_fwd: int, n_bwd: int) -> None:
    """The floor: per batch, ``n_fwd`` frozen forwards and ``n_bwd`` forward+backward passes (gradient w.r.t. the
    input embeddings) of the plain HF model."""
    for batch in batches:
        tokens = batch.clean.to(device)
        for _ in range(n_fwd):
            with torch.no_grad():
                hf(tokens)
        for _ in range(n_bwd):
            embeds = hf.get_input_embeddings()(tokens).detach().requires_grad_(True)
            hf(inputs_embeds=embeds).logits[:, -1, 0].sum().backward()


def method_runs(bridge, tracer: Tracer, batches: list[PairBatch], generator: torch.Generator) -> dict:
    """``{method: (callable, forward-only passes, forward+backward passes per batch)}`` of every benchmarked method;
    circuit evaluation scores a random circuit of about 10 % of the edges."""
    n_layers = tracer.shape.n_layers

    def run(method: str, **kwargs):
        return lambda: attribute(bridge, batches, logit_diff, method=method, tracer=tracer, progress=False, **kwargs)

    def circuit_evaluation():
        keep = torch.rand(tracer.shape.valid.shape, generator=generator) < 0.1
        return evaluate_masks(tracer, tracer.shape.valid[None] & keep, batches, logit_diff)

    return {
        "EAP": (run("EAP"), 2, 1),
        "EAP-IG-inputs (5)": (run("EAP-IG-inputs", ig_steps=5), 2, 5),
        "clean-corrupted": (run("clean-corrupted"), 2, 2),
        "EAP-IG-activations (5)": (run("EAP-IG-activations", ig_steps=5), 2, 5 * (2 * n_layers + 1)),
        "circuit evaluation": (circuit_evaluation, 3, 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=None, help="override the shape's number of layers")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = build_config(args.shape, args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        hf, bridge = random_models(config, args.dtype, args.device, Path(tmp))
    batches = random_pair_batches(config.vocab_size, args.pairs, args.batch, torch.Generator().manual_seed(0))
    tracer = Tracer(bridge)
    n_layers = config.num_hidden_layers
    runs = method_runs(bridge, tracer, batches, torch.Generator().manual_seed(0))
    hf_passes(hf, batches, args.device, 1, 1)  # warm-up
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"{n_params / 1e9:.2f} B parameters = {n_params * hf.dtype.itemsize / 2**30:.2f} GiB per copy "
          f"(the HF model and the bridge each hold one); {n_layers} layers, {args.dtype}, {torch.get_num_threads()} "
          f"threads; peak before the runs {peak_gib(args.device):.2f} GiB")
    print("| method | wall s | peak GiB | passes/batch (fwd, fwd+bwd) | HF floor s | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (fn, n_fwd, n_bwd) in runs.items():
        if name.split(" (")[0].replace(" ", "-") not in args.methods:
            continue
        floor, _ = timed(lambda: hf_passes(hf, batches, args.device, n_fwd, n_bwd), args.device)
        wall, peak = timed(fn, args.device)
        print(f"| {name} | {wall:.3f} | {peak:.2f} | {n_fwd}, {n_bwd} | {floor:.3f} | {wall / floor:.2f} |", flush=True)


if __name__ == "__main__":
    main()
