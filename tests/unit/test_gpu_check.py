"""The GPU check (``benchmarks/gpu_check.py``): its ``--smoke`` run does every part at tiny shapes on the CPU and
writes every measurement, finite and positive; the time guard skips, stops and records failures; the split device
map covers the model and halves its layers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import SMOKE, Plan, run_part, split_device_map

REPO = Path(__file__).resolve().parents[2]
TINY = dict(layers=2, heads=4, d_mlp=256)  # benchmarks/circuit_engine.py SHAPES["tiny"], the smoke run's shape
PARTS = {"engine_tiny", "localization_tiny", "device_map_split", "features_toy", "engine_llama-tiny"}
ENGINE_METHODS = {"EAP", "EAP-IG-inputs (5)", "circuit evaluation"}
METHOD_KEYS = {"wall_s", "floor_s", "ratio", "peak_gib", "passes_per_batch"}
NEURON_KEYS = {"layer", "neurons", "prompts", "naive_s", "ours_s", "speedup", "peak_gib_naive", "peak_gib_ours"}
IE_KEYS = {"sites", "prompts", "wall_s", "sites_per_s", "floor_s", "ratio", "peak_gib"}
TRAINING_KEYS = {"d", "features", "k", "steps", "s_per_1000_steps"}
GRAPH_KEYS = {"layers", "tokens", "nodes", "targets", "qk_targets", "graph_s", "prune_s", "graph_peak_gib",
              "completeness_error"}
SPLIT_KEYS = {"max_abs_diff", "max_abs_score", "allclose", "wall_s_whole", "wall_s_split", "peak_gib_whole",
              "peak_gib_split"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def numbers(tree, path=()):
    """(key path, value) of every number in a JSON tree (booleans excluded)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numbers(value, (*path, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from numbers(value, (*path, i))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def test_smoke_runs_every_part_and_records_the_environment(smoke):
    report, _ = smoke
    assert set(report["parts"]) == PARTS
    assert {name: part["status"] for name, part in report["parts"].items()} == dict.fromkeys(PARTS, "ok")
    env = report["environment"]
    assert env["mode"] == "smoke" and env["device"].startswith("cpu")
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"transformers", "transformer-lens", "accelerate"} <= set(env["packages"])


def test_smoke_has_every_measurement(smoke):
    parts = smoke[0]["parts"]
    for name in ("engine_tiny", "engine_llama-tiny"):
        assert set(parts[name]["methods"]) == ENGINE_METHODS
        for method in ENGINE_METHODS:
            assert METHOD_KEYS <= set(parts[name]["methods"][method])
    assert NEURON_KEYS <= set(parts["localization_tiny"]["neuron_patching"])
    assert IE_KEYS <= set(parts["localization_tiny"]["ie_map"])
    assert TRAINING_KEYS <= set(parts["features_toy"]["training"])
    assert GRAPH_KEYS <= set(parts["features_toy"]["graph"])
    variants = parts["device_map_split"]["variants"]
    assert set(variants) == {"hf_device_map", "two_devices"}
    for variant in variants.values():
        for method in ("EAP", "EAP-IG-inputs"):
            assert SPLIT_KEYS <= set(variant[method])
            assert variant[method]["allclose"] is True


def test_every_number_is_finite_and_positive(smoke):
    found = list(numbers(smoke[0]))
    assert len(found) > 50
    for path, value in found:
        assert math.isfinite(value), path
        assert value >= 0 if path[-1].endswith("_diff") else value > 0, path  # same-device splits differ by 0


def test_counts_and_ratios_agree_with_the_shapes_and_times(smoke):
    parts = smoke[0]["parts"]
    neurons, ie_map = parts["localization_tiny"]["neuron_patching"], parts["localization_tiny"]["ie_map"]
    assert neurons["neurons"] == TINY["d_mlp"] and neurons["layer"] == TINY["layers"] // 2
    assert ie_map["sites"] == TINY["layers"] * (TINY["heads"] + 1) * 4  # heads and the MLP at 4 positions
    assert ie_map["sites_per_s"] == pytest.approx(ie_map["sites"] / ie_map["wall_s"])
    assert neurons["speedup"] == pytest.approx(neurons["naive_s"] / neurons["ours_s"])
    for method in parts["engine_tiny"]["methods"].values():
        assert method["ratio"] == pytest.approx(method["wall_s"] / method["floor_s"])
    training, graph = parts["features_toy"]["training"], parts["features_toy"]["graph"]
    assert (training["d"], training["features"], training["k"]) == (64, 512, 8)  # feature_circuits.SHAPES["toy"]
    assert graph["layers"] == 2 and graph["completeness_error"] < 1e-4 and 0 < graph["qk_targets"] < graph["targets"]


def test_markdown_has_a_row_per_measurement(smoke):
    rows = [line for line in smoke[1].splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| part | measurement |")
    for method in ENGINE_METHODS:
        assert sum(f"| {method} |" in row for row in rows) == 2  # Pythia- and Llama-shaped engine parts
    assert any("exact patching of layer 1, 256 neurons" in row for row in rows)
    assert any("IE map, 40 sites" in row for row in rows)
    assert sum("scores vs whole" in row for row in rows) == 4  # 2 variants x (EAP, EAP-IG-inputs)
    assert any("train_dictionary, transcoder d 64 × 512 features" in row for row in rows)
    assert any("attribution graph, 2 layers" in row for row in rows)


def test_split_device_map_covers_every_module_and_halves_the_layers():
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    config = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=64)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    device_map = split_device_map(model, "first", "second")
    assert [device_map[f"gpt_neox.layers.{i}"] for i in range(4)] == ["first", "first", "second", "second"]
    head = next(name for name, module in model.named_modules() if module is model.get_output_embeddings())
    assert device_map["gpt_neox.embed_in"] == "first" and device_map[head] == "second"
    assert device_map["gpt_neox.final_layer_norm"] == "second"
    for name, _ in [*model.named_parameters(), *model.named_buffers()]:
        assert any(name.startswith(f"{module}.") for module in device_map), name


def plan(**estimates) -> Plan:
    return replace(SMOKE, estimates=estimates)


def test_the_time_guard_skips_stops_and_records_failures():
    results: dict = {}
    run_part("big", lambda record: record.update(ran=True), plan(big=100), time.monotonic() + 5, results)
    assert results["big"]["status"] == "skipped" and "ran" not in results["big"]

    def slow(record):
        record["first"] = 1.0
        while True:
            time.sleep(0.01)

    run_part("slow", slow, plan(slow=0), time.monotonic() + 0.3, results)
    assert results["slow"]["status"] == "stopped" and results["slow"]["first"] == 1.0
    assert results["slow"]["part_s"] == pytest.approx(0.3, abs=0.2)

    def broken(record):
        raise ValueError("no such layer\nsecond line")

    run_part("broken", broken, plan(broken=0), time.monotonic() + 5, results)
    assert results["broken"] == {"status": "failed", "note": "ValueError: no such layer",
                                 "part_s": results["broken"]["part_s"]}
