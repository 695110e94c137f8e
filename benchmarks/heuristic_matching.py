"""Heuristic classification speed at a real model's size: vectorized matching (circuitflow.heuristics.classify)
against a loop over neurons and heuristics (one ranked-prefix lookup per pair, as the original code does, but in
numpy rather than Python lists).

    python -m benchmarks.heuristic_matching --operand-max 300 --neurons 3200        # 200 neurons x 16 layers
    python -m benchmarks.heuristic_matching --operand-max 99 --neurons 128 --device cpu --threads 1

Synthetic activations (random, with a few planted heuristics) over every legal ``x+y=`` prompt; no model is needed:
matching reads only activations and direct logits.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from circuitflow.arithmetic import answers, legal_pairs
from circuitflow.heuristics import HeuristicSpec, classify, heuristic_set


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--operand-max", type=int, default=300)
    parser.add_argument("--neurons", type=int, default=3200)
    parser.add_argument("--loop-neurons", type=int, default=4, help="neurons timed in the loop (extrapolated)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = legal_pairs("add", args.operand_max, 2 * args.operand_max)
    op1, op2 = pairs[:, 0], pairs[:, 1]
    result = answers("add", op1, op2)
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(len(pairs), args.neurons, generator=gen)
    acts[:, 0] += torch.from_numpy(op1 % 7 == 3).float() * 3  # planted: op1 ≡ 3 (mod 7)
    direct = torch.randn(len(pairs), args.neurons, generator=gen)
    neurons = torch.stack([torch.arange(args.neurons) // 200, torch.arange(args.neurons) % 200], 1)
    spec = HeuristicSpec()
    fixed = heuristic_set(op1, op2, result, spec)

    start = time.perf_counter()
    found = classify(acts, direct, neurons, op1, op2, result, spec=spec, null_permutations=0, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_fast = time.perf_counter() - start
    assert "op1_mod_3mod7" in set(found.matches().query("neuron == 0 and layer == 0")["heuristic"])

    kinds = np.array(fixed.kinds)
    start = time.perf_counter()
    for n in range(args.loop_neurons):  # the loop: every (neuron, heuristic) pair on its own
        orders = {"operand": np.argsort(-acts[:, n].numpy(), kind="stable"),
                  "result": np.argsort(-(acts[:, n] * direct[:, n]).numpy(), kind="stable")}
        for h in range(len(fixed)):
            mask = fixed.masks[h]
            k = int(mask.sum())
            mask[orders[kinds[h]][:k]].mean()
    t_loop = (time.perf_counter() - start) * args.neurons / args.loop_neurons
    print(f"| {len(pairs)} prompts, {len(fixed)} heuristics, {args.neurons} neurons | vectorized {t_fast:.1f} s "
          f"| loop {t_loop:.0f} s (extrapolated from {args.loop_neurons}) | {t_loop / t_fast:.0f}x |")


if __name__ == "__main__":
    main()
