"""The GPU check of issue 9: one run, under 9 minutes on one H100/H200, that writes ``gpu_check.json`` and
``gpu_check.md`` (format and meaning: ``benchmarks/gpu_check_expected.md``).

    bash benchmarks/gpu_check.sh                      # on the GPU machine: picks a CUDA Python, then runs this
    python -m benchmarks.gpu_check --smoke --out DIR  # every part at tiny shapes on the CPU (< 60 s on 2 idle cores)

Parts, in this order (random weights built from configs, nothing downloaded):

* ``engine_pythia-1.4b``, ``engine_llama-3-8b``: EAP, EAP-IG-inputs (5 steps) and circuit evaluation in bf16 against
  the floor, the same forward/backward passes of the plain HF model (``benchmarks/circuit_engine.py``);
* ``localization_pythia-1.4b``: exact patching of every neuron of one layer at the last position against the naive
  one-forward-per-neuron loop (timed on its first neurons, extrapolated to the layer), and the IE map of every head
  and MLP at 4 positions (sites per second, against plain forwards of as many rows);
* ``device_map_split``: EAP and EAP-IG-inputs scores of one float32 model loaded whole on the first device and split
  (first half of the layers there, the rest on the second device), once through ``load_bridge(device_map=...)``
  (HF/accelerate: modules mapped to ``cpu`` are offloaded and run on the GPU) and once dispatched so that each half
  runs where its weights are (activations really cross devices);
* ``features_pythia-160m``: the feature-circuit stage at Pythia-160m's width in float32
  (``benchmarks/feature_circuits.py``): ``train_dictionary`` steps of a top-k transcoder (6144 features, k 32) on the
  device, and one attribution graph of all 12 layers (transcoders and attention SAEs, LEAP's Q/K edges included),
  then its pruning.

A global time budget guards the run: a part whose estimate no longer fits is skipped with a note, and a part still
running at the deadline is stopped and keeps what it measured. Both files are rewritten after every part. Peak
memory is ``torch.cuda.max_memory_allocated`` since a reset at the start of each measurement (CPU: the process's
peak RSS, which never decreases).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.circuit_engine import build_config, hf_passes, method_runs, random_models, random_pair_batches, timed
from benchmarks.feature_circuits import SHAPES as FEATURE_SHAPES
from benchmarks.feature_circuits import graph_measurement, training_seconds
from benchmarks.neuron_patching import ie_map_floor, ie_map_sites, naive_neuron_patching
from circuitflow.circuits import Tracer, attribute
from circuitflow.codehash import script_code_hash
from circuitflow.localization.patching import last_position_neuron_patching, patch_sites, site_activations
from circuitflow.metrics import ie, logit_diff
from circuitflow.models import ModelHandle, load_bridge, load_hf_model
from circuitflow.provenance import git_state, package_versions

ENGINE_METHODS = ("EAP", "EAP-IG-inputs (5)", "circuit evaluation")
SPLIT_METHODS = ("EAP", "EAP-IG-inputs")
PACKAGES = ("torch", "transformers", "transformer-lens", "accelerate", "tokenizers", "huggingface-hub")


@dataclass(frozen=True)
class Plan:
    """Shapes and sizes of one run; ``estimates`` are each part's expected seconds (the budget guard's input)."""

    device: str
    second_device: str  # where the split model's second half lives
    dtype: str
    engine_shapes: tuple[tuple[str, int | None], ...]  # (shape, layers or None = the shape's own)
    pairs: int
    batch: int
    patch_shape: str
    prompts: int
    naive_neurons: int
    neuron_rows: int
    ie_rows: int
    split_shape: str
    feature_shape: str  # a shape of benchmarks/feature_circuits.py
    feature_steps: int  # train_dictionary steps timed
    estimates: dict[str, float]
    budget_s: float


GPU = Plan(device="cuda:0", second_device="cpu", dtype="bfloat16",
           engine_shapes=(("pythia-1.4b", None), ("llama-3-8b", None)), pairs=256, batch=64,
           patch_shape="pythia-1.4b", prompts=50, naive_neurons=256, neuron_rows=8192, ie_rows=4096,
           split_shape="small", feature_shape="pythia-160m", feature_steps=200,
           estimates={"engine_pythia-1.4b": 60, "localization_pythia-1.4b": 75, "device_map_split": 45,
                      "features_pythia-160m": 60, "engine_llama-3-8b": 150},
           budget_s=480)
SMOKE = Plan(device="cpu", second_device="cpu", dtype="bfloat16",
             engine_shapes=(("tiny", None), ("llama-tiny", None)), pairs=16, batch=8,
             patch_shape="tiny", prompts=8, naive_neurons=4, neuron_rows=512, ie_rows=512, split_shape="tiny",
             feature_shape="toy", feature_steps=5,
             estimates={"engine_tiny": 5, "localization_tiny": 5, "device_map_split": 5, "features_toy": 5,
                        "engine_llama-tiny": 5},
             budget_s=600)


class Deadline(Exception):
    """Raised inside a part when the run's time budget ends."""


def _on_alarm(signum, frame):
    raise Deadline()


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(plan: Plan, smoke: bool) -> dict:
    """Device, package versions, the code (git commit where there is a checkout; the hash of the library sources
    this script imports, which identifies them anywhere) and run settings."""
    cuda = plan.device.startswith("cuda")
    return {
        "mode": "smoke" if smoke else "gpu",
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()}, "
                                                                f"{torch.get_num_threads()} threads)",
        "cuda": torch.version.cuda or "none",
        "packages": package_versions(PACKAGES),
        "git": git_state(),
        "code_hash": script_code_hash(Path(__file__)),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "memory": "torch.cuda.max_memory_allocated, reset per measurement" if cuda else
                  "process peak RSS (never decreases)",
        "plan": {k: v for k, v in asdict(plan).items() if k != "estimates"},
    }


# ---------------------------------------------------------------------------------------------------- the parts
def engine_part(plan: Plan, shape: str, layers: int | None, record: dict) -> None:
    """EAP, EAP-IG-inputs and circuit evaluation at ``shape`` against the plain-HF floor (``record`` is filled as
    each method is measured)."""
    config = build_config(shape, layers)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        hf, bridge = random_models(config, plan.dtype, plan.device, Path(tmp))
    n_params = sum(p.numel() for p in hf.parameters())
    record.update(layers=config.num_hidden_layers, hidden=config.hidden_size, dtype=plan.dtype,
                  params_billion=n_params / 1e9, weights_gib_both_copies=2 * n_params * hf.dtype.itemsize / 2**30,
                  pairs=plan.pairs, batch=plan.batch, build_s=time.perf_counter() - start, methods={})
    gen = torch.Generator().manual_seed(0)
    batches = random_pair_batches(config.vocab_size, plan.pairs, plan.batch, gen)
    tracer = Tracer(bridge)
    runs = method_runs(bridge, tracer, batches, gen)
    warm_ups = method_runs(bridge, tracer, batches[:1], gen)
    hf_passes(hf, batches[:1], plan.device, 1, 1)
    for name in ENGINE_METHODS:
        fn, n_fwd, n_bwd = runs[name]
        warm_ups[name][0]()
        floor, _ = timed(lambda: hf_passes(hf, batches, plan.device, n_fwd, n_bwd), plan.device)
        wall, peak = timed(fn, plan.device)
        record["methods"][name] = dict(wall_s=wall, floor_s=floor, ratio=wall / floor, peak_gib=peak,
                                       passes_per_batch=f"{n_fwd} forward, {n_bwd} forward+backward")


def localization_part(plan: Plan, record: dict) -> None:
    """Exact neuron patching of one layer vs the naive loop, and the IE map's throughput."""
    config = build_config(plan.patch_shape)
    with tempfile.TemporaryDirectory() as tmp:
        hf, bridge = random_models(config, plan.dtype, plan.device, Path(tmp))
    del hf  # only the bridge is needed
    release_memory()
    tracer = Tracer(bridge)
    batch = random_pair_batches(config.vocab_size, plan.prompts, plan.prompts, torch.Generator().manual_seed(0))[0]
    batch = batch.to(plan.device)
    layer, d_mlp, n_naive = config.num_hidden_layers // 2, config.intermediate_size, plan.naive_neurons
    with torch.no_grad():
        _, _, post_corrupt = site_activations(tracer, batch.corrupt)
        naive_neuron_patching(tracer, batch, layer, post_corrupt, 1)  # warm-up
        naive, peak_naive = timed(lambda: naive_neuron_patching(tracer, batch, layer, post_corrupt, n_naive),
                                  plan.device)
        naive *= d_mlp / n_naive
        ours_fn = lambda n: last_position_neuron_patching(tracer, batch, layer, torch.arange(n), ie,  # noqa: E731
                                                          max_rows=plan.neuron_rows)
        ours_fn(8)  # warm-up
        ours, peak_ours = timed(lambda: ours_fn(d_mlp), plan.device)
        record["neuron_patching"] = dict(
            layer=layer, neurons=d_mlp, prompts=plan.prompts, naive_s=naive, ours_s=ours, speedup=naive / ours,
            peak_gib_naive=peak_naive, peak_gib_ours=peak_ours,
            note=f"naive loop timed on the layer's first {n_naive} neurons, extrapolated linearly to {d_mlp}")
        sites, n_all = ie_map_sites(config.num_hidden_layers, config.num_attention_heads)
        run_sites = lambda s: patch_sites(tracer, batch, s["layer"], s["unit"], s["pos"], s["kind"],  # noqa: E731
                                          {"ie": ie}, max_rows=plan.ie_rows)
        run_sites(ie_map_sites(config.num_hidden_layers, config.num_attention_heads, 4)[0])  # warm-up
        wall, peak = timed(lambda: run_sites(sites), plan.device)
        floor, _ = timed(lambda: ie_map_floor(bridge, batch.clean, n_all, plan.ie_rows), plan.device)
        record["ie_map"] = dict(sites=n_all, prompts=plan.prompts, wall_s=wall, sites_per_s=n_all / wall,
                                floor_s=floor, ratio=wall / floor, peak_gib=peak,
                                note="every head and MLP at 4 positions; floor = plain forwards of as many rows")


def split_device_map(model: torch.nn.Module, first: str, second: str) -> dict[str, str]:
    """HF ``device_map`` of ``model`` (may live on the meta device): the first half of its decoder layers and every
    module registered before them on ``first``, the rest on ``second``."""
    layers_name, layers = next((name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList))
    half, device_map, seen_layers = len(layers) // 2, {}, False
    for name, module in model.named_modules():
        if name.startswith(f"{layers_name}."):
            index = name[len(layers_name) + 1:]
            if index.isdigit():
                device_map[name] = first if int(index) < half else second
                seen_layers = True
        elif any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            device_map[name] = second if seen_layers else first
    return device_map


def param_devices(model: torch.nn.Module) -> dict[str, float]:
    """Share of ``model``'s parameters on each device (``meta``: offloaded, brought in at each forward)."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        counts[str(p.device)] = counts.get(str(p.device), 0) + p.numel()
    total = sum(counts.values())
    return {device: n / total for device, n in sorted(counts.items())}


def timed_scores(bridge, batches, method: str, device: str) -> tuple[torch.Tensor, float, float]:
    """(edge scores ``[n_up, n_down]``, wall s, peak GiB) of one :func:`attribute` run."""
    out = []
    wall, peak = timed(lambda: out.append(attribute(bridge, batches, logit_diff, method=method, ig_steps=5,
                                                    progress=False).scores), device)
    return out[0], wall, peak


def split_part(plan: Plan, record: dict) -> None:
    """EAP and EAP-IG-inputs scores of a model split over two devices against the same model whole on one. Variants:
    ``hf_device_map`` = ``load_bridge(device_map=...)`` (HF places the map; ``cpu`` modules are offloaded and run on
    the GPU), ``two_devices`` = the map dispatched so that each module runs where its weights are."""
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    from circuitflow.toy import build_tokenizer

    config = build_config(plan.split_shape)
    with torch.device("meta"):
        device_map = split_device_map(AutoModelForCausalLM.from_config(config), plan.device, plan.second_device)
    batches = random_pair_batches(config.vocab_size, 32, 16, torch.Generator().manual_seed(0))
    record.update(shape=plan.split_shape, layers=config.num_hidden_layers, dtype="float32",
                  devices=f"{plan.device} + {plan.second_device}", variants={})

    def dispatched(handle: ModelHandle):
        hf = dispatch_model(load_hf_model(handle, device="cpu", dtype="float32"), device_map, main_device="cpu")
        return load_bridge(handle, dtype="float32", hf_model=hf, allow_cpu_gpu_split=True)

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
        build_tokenizer(99).save_pretrained(tmp)
        handle = ModelHandle("split", tmp)
        bridge = load_bridge(handle, device=plan.device, dtype="float32")
        whole = {method: timed_scores(bridge, batches, method, plan.device) for method in SPLIT_METHODS}
        del bridge
        release_memory()
        variants = {"hf_device_map": lambda: load_bridge(handle, dtype="float32", device_map=device_map,
                                                         allow_cpu_gpu_split=True),
                    "two_devices": lambda: dispatched(handle)}
        for variant, build in variants.items():
            result = record["variants"][variant] = {"status": "failed"}
            try:
                bridge = build()
                result["param_devices"] = param_devices(bridge.original_model)
                for method in SPLIT_METHODS:
                    reference, wall_whole, peak_whole = whole[method]
                    split, wall, peak = timed_scores(bridge, batches, method, plan.device)
                    scale = reference.abs().max().item()
                    result[method] = dict(
                        max_abs_diff=(split - reference).abs().max().item(), max_abs_score=scale,
                        allclose=bool(torch.allclose(split, reference, rtol=1e-3, atol=1e-4 * scale)),
                        wall_s_whole=wall_whole, wall_s_split=wall, peak_gib_whole=peak_whole, peak_gib_split=peak)
                result["status"] = "ok"
            except Deadline:
                raise
            except Exception as error:  # a variant that fails is a result; the other variant still runs
                result["note"] = first_line(error)
            bridge = None
            release_memory()
    failed = [v for v, r in record["variants"].items() if r["status"] != "ok"]
    disagree = [f"{v} {m}" for v, r in record["variants"].items() for m in SPLIT_METHODS
                if m in r and not r[m]["allclose"]]
    if failed or disagree:
        raise RuntimeError(f"split variants failed: {failed or 'none'}; scores differ: {disagree or 'none'}")


# ---------------------------------------------------------------------------------------------------- the run
def run_part(name: str, fn: Callable[[dict], None], plan: Plan, deadline: float, results: dict) -> None:
    """Run one part under the budget: skipped when its estimate does not fit, stopped at the deadline; a failure is
    recorded with its one-line error. ``results[name]`` keeps whatever ``fn`` recorded before it ended."""
    left = deadline - time.monotonic()
    record = results[name] = {"status": "skipped"}
    if left < plan.estimates[name]:
        record["note"] = f"skipped: {left:.0f} s of the budget left, the part needs about {plan.estimates[name]:.0f} s"
        return
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        fn(record)
        record["status"] = "ok"
    except Deadline:
        record.update(status="stopped", note="stopped at the end of the time budget; later parts skipped")
    except Exception as error:  # one failing part must not cost the others' numbers
        record.update(status="failed", note=first_line(error))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        record["part_s"] = time.perf_counter() - start
        release_memory()


def features_part(plan: Plan, record: dict) -> None:
    """Dictionary training steps and one attribution graph (with Q/K edges) at ``plan.feature_shape``, float32."""
    shape = FEATURE_SHAPES[plan.feature_shape]
    d = shape["config"]["hidden_size"]
    seconds = training_seconds(d, "mlp", shape["expansion"], shape["k"], plan.feature_steps, 1024, "float32",
                               plan.device)
    record["training"] = dict(d=d, features=shape["expansion"] * d, k=shape["k"], steps=plan.feature_steps,
                              s_per_1000_steps=seconds / plan.feature_steps * 1000)
    graph = graph_measurement(plan.feature_shape, None, 64, plan.device, "float32", None, qk_only=True)
    record["graph"] = {key: graph[key] for key in ("layers", "tokens", "nodes", "targets", "qk_targets",
                                                   "graph_s", "prune_s", "graph_peak_gib", "completeness_error")}


def parts(plan: Plan) -> dict[str, Callable[[dict], None]]:
    """``{part name: fn(record)}`` in run order: the Pythia-width parts, the split, the feature circuits, then the
    largest model."""
    (small_shape, small_layers), (large_shape, large_layers) = plan.engine_shapes
    return {
        f"engine_{small_shape}": lambda r: engine_part(plan, small_shape, small_layers, r),
        f"localization_{plan.patch_shape}": lambda r: localization_part(plan, r),
        "device_map_split": lambda r: split_part(plan, r),
        f"features_{plan.feature_shape}": lambda r: features_part(plan, r),
        f"engine_{large_shape}": lambda r: engine_part(plan, large_shape, large_layers, r),
    }


def fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    """One table of every measurement (the format of ``benchmarks/gpu_check_expected.md``)."""
    env = report["environment"]
    pk = env["packages"]
    lines = [f"# GPU check ({env['mode']}): {env['device']}", "",
             f"torch {pk['torch']} (CUDA {env['cuda']}), transformers {pk['transformers']}, transformer-lens "
             f"{pk['transformer-lens']}, accelerate {pk['accelerate']}, Python {pk['python']}; commit "
             f"{env['git']['commit']} (dirty: {env['git']['dirty']}), code hash {env['code_hash']}; "
             f"{env['started_utc']}; {report['wall_s']:.0f} s of a "
             f"{env['plan']['budget_s']:.0f} s budget. Peak memory: {env['memory']}.", "",
             "| part | measurement | wall s | reference s | ratio or rate | peak GiB | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rec in report["parts"].items():
        if rec["status"] != "ok":
            lines.append(f"| {name} | {rec['status']} | | | | | {rec.get('note', '')} |")
        if name.startswith("engine_") and "methods" in rec:
            what = (f"{name} ({rec['layers']} layers, d_model {rec['hidden']}, {rec['dtype']}, "
                    f"{rec['params_billion']:.3g} B params)")
            for method, m in rec["methods"].items():
                lines.append(f"| {what} | {method} | {fmt(m['wall_s'])} | HF floor {fmt(m['floor_s'])} | "
                             f"{m['ratio']:.2f}× | {fmt(m['peak_gib'])} | {m['passes_per_batch']} per batch |")
        if "neuron_patching" in rec:
            n = rec["neuron_patching"]
            lines.append(f"| {name} | exact patching of layer {n['layer']}, {n['neurons']} neurons × {n['prompts']} "
                         f"prompts | {fmt(n['ours_s'])} | naive {fmt(n['naive_s'])} | {n['speedup']:.1f}× faster | "
                         f"{fmt(n['peak_gib_ours'])} (naive {fmt(n['peak_gib_naive'])}) | {n['note']} |")
        if "ie_map" in rec:
            m = rec["ie_map"]
            lines.append(f"| {name} | IE map, {m['sites']} sites × {m['prompts']} prompts | {fmt(m['wall_s'])} | "
                         f"floor {fmt(m['floor_s'])} | {m['sites_per_s']:.0f} sites/s ({m['ratio']:.2f}× floor) | "
                         f"{fmt(m['peak_gib'])} | {m['note']} |")
        for variant, v in rec.get("variants", {}).items():
            where = ", ".join(f"{d} {share:.0%}" for d, share in v.get("param_devices", {}).items())
            for method in SPLIT_METHODS:
                if method in v:
                    m = v[method]
                    lines.append(f"| {name} ({rec['devices']}) | {variant}: {method} scores vs whole | "
                                 f"{fmt(m['wall_s_split'])} | whole {fmt(m['wall_s_whole'])} | max abs diff "
                                 f"{m['max_abs_diff']:.2g} of {m['max_abs_score']:.2g} (allclose {m['allclose']}) | "
                                 f"{fmt(m['peak_gib_split'])} (whole {fmt(m['peak_gib_whole'])}) | "
                                 f"parameters: {where} |")
            if v["status"] != "ok":
                lines.append(f"| {name} | {variant}: failed | | | | | {v.get('note', '')} |")
        if "training" in rec:
            t = rec["training"]
            lines.append(f"| {name} | train_dictionary, transcoder d {t['d']} × {t['features']} features, k {t['k']}, "
                         f"batch 1024, {t['steps']} steps | {fmt(t['s_per_1000_steps'] * t['steps'] / 1000)} | | "
                         f"{fmt(t['s_per_1000_steps'])} s per 1000 steps | | float32 |")
        if "graph" in rec:
            g = rec["graph"]
            lines.append(f"| {name} | attribution graph, {g['layers']} layers, {g['tokens']} tokens, {g['nodes']} "
                         f"nodes, {g['targets']} targets + {g['qk_targets']} Q/K targets | {fmt(g['graph_s'])} | "
                         f"prune {fmt(g['prune_s'])} | completeness error {g['completeness_error']:.1g} | "
                         f"{fmt(g['graph_peak_gib'])} | with Q/K edges, batch 64 |")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "benchmarks/results"),
                        help="folder for gpu_check.json and gpu_check.md (default: $OUT if set, else "
                             "benchmarks/results)")
    parser.add_argument("--smoke", action="store_true", help="every part at tiny shapes on the CPU")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget of all parts (GPU default 480)")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else GPU
    if args.budget_s is not None:
        plan = Plan(**(asdict(plan) | {"budget_s": args.budget_s}))
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no GPU; run it through benchmarks/gpu_check.sh on a GPU machine, or use "
                 "--smoke")
    start = time.monotonic()
    deadline = start + plan.budget_s
    report = {"environment": environment(plan, args.smoke), "parts": {}, "wall_s": 0.0}
    for name, fn in parts(plan).items():
        print(f"gpu_check: {name} ...", flush=True)
        run_part(name, fn, plan, deadline, report["parts"])
        report["wall_s"] = time.monotonic() - start
        write(report, args.out)
        print(f"gpu_check: {name} {report['parts'][name]['status']} in {report['parts'][name]['part_s']:.1f} s"
              if "part_s" in report["parts"][name] else f"gpu_check: {name} skipped", flush=True)
    print((args.out / "gpu_check.md").read_text())
    if any(rec["status"] == "failed" for rec in report["parts"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
