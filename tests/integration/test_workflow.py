"""The workflow end to end on seconds-scale configs, one per toy architecture (GPT-NeoX with + and ×, Llama with
grouped-query attention and GPT-2 with + only; the default config's make run covers all four operators): every output exists and is sane; a rerun does nothing.
Expected shapes and operators are read from the config."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.integration.conftest import TINY, snakemake

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.workflow
CONFIGS = {"gpt_neox": "tiny.yaml", "llama": "tiny-llama.yaml", "gpt2": "tiny-gpt2.yaml"}


@dataclass(frozen=True)
class Run:
    """A finished tiny run: its results folder, config file and the shapes its config implies."""

    results: Path
    configfile: Path
    architecture: str
    ops: tuple[str, ...]
    methods: tuple[str, ...]
    steps: tuple[int, ...]
    n_layers: int
    n_heads: int
    d_mlp: int
    seeds: int
    neurons_per_layer: tuple[int, ...]
    knockout_neurons: tuple[int, ...]
    heuristic_neurons: int
    features: bool  # the feature-circuit stage ran (for the toy)

    @classmethod
    def of(cls, results: Path, configfile: Path) -> Run:
        config = yaml.safe_load(configfile.read_text())
        recipe = config["models"]["toy"]["recipe"]
        loc, heur = config["localization"], config["heuristics"]
        return cls(results, configfile, recipe.get("architecture", "gpt_neox"), tuple(config["operators"]),
                   tuple(config["circuits"]["methods"]),
                   tuple(sorted({*recipe["checkpoint_steps"], recipe["steps"]})), recipe["n_layers"],
                   recipe["n_heads"], recipe["d_mlp"], len(loc["seeds"]), tuple(loc["neurons_per_layer"]),
                   tuple(heur["knockout_neurons_per_layer"]), heur["neurons_per_layer"],
                   config.get("features", {}).get("enabled", True))


@pytest.fixture(scope="module", params=list(CONFIGS))
def run(request, tmp_path_factory) -> Run:
    configfile = ROOT / "tests/configs" / CONFIGS[request.param]
    if configfile == TINY:  # the session's shared run
        return Run.of(request.getfixturevalue("tiny_workdir") / "results", configfile)
    workdir = tmp_path_factory.mktemp(f"workflow_{request.param}")
    done = snakemake(workdir, configfile)
    assert done.returncode == 0, done.stderr[-4000:]
    return Run.of(workdir / "results", configfile)


def test_configs_build_the_named_architecture(run):
    import json

    final = run.results / "models/toy/checkpoints" / f"step{run.steps[-1]}"
    meta, config = (json.loads((final / name).read_text()) for name in ("circuitflow.json", "config.json"))
    assert meta["recipe"]["architecture"] == run.architecture
    assert config["model_type"] == run.architecture
    if run.architecture == "llama":
        assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention


def expected_outputs(run: Run) -> list[str]:
    final = run.steps[-1]
    return [
        "models/toy/model.json", "models/toy/checkpoints.json", "models/toy/training_log.parquet",
        "models/toy/checkpoints/step0/config.json", f"models/toy/checkpoints/step{final}/model.safetensors",
        "models/toy-lora/adapter/adapter_config.json", "models/toy-lora/adapter_raw.safetensors",
        "models/toy-lora/finetune.parquet", "models/toy-lora/merged/config.json", "models/toy-lora/model.json",
        "toy/accuracy.parquet", "toy-lora/accuracy.parquet", "toy/checkpoint_accuracy.parquet",
        "figures/accuracy.png", "figures/accuracy.pdf", "figures/toy/training.png",
        "figures/toy/checkpoint_accuracy.png",
        *(f"{m}/{kind}/{op}.parquet" for m in ("toy", "toy-lora") for kind in ("prompts", "answers")
          for op in run.ops),
        *(f"logs/{rule}" for rule in ("train_toy", "prompts", "merge_lora", "finetune_toy_lora", "plot_accuracy",
                                       "attribute", "faithfulness", "draw_circuits")),
        *(f"toy/graphs/{op}/{m}.{ext}" for op in run.ops for m in run.methods for ext in ("pt", "json")),
        *(f"toy/circuits/{op}/{t}.parquet" for op in run.ops for t in ("faithfulness", "areas", "agreement")),
        *(f"figures/toy/circuits/{op}/{m}.png" for op in run.ops for m in run.methods),
        *(f"figures/toy/faithfulness_{op}.{ext}" for op in run.ops for ext in ("png", "pdf")),
        *(f"toy/{t}/{op}.parquet" for op in run.ops for t in ("ie_maps", "neurons", "probes", "paper_circuits",
                                                           "attention")),
        *(f"toy/attention/{op}_ov.parquet" for op in run.ops),
        *(f"figures/toy/{f}_{op}.png" for op in run.ops for f in ("ie_map", "neurons", "probes", "attention")),
        "figures/toy/paper_faithfulness.png", "figures/toy/paper_faithfulness.pdf",
        "toy/checkpoint_ie_maps.parquet", "figures/toy/checkpoint_ie.png",
        *(f"toy/heuristics/{op}{t}.parquet" for op in run.ops
          for t in ("", "_knockout", "_prompt_knockout", "_maps")),
        *(f"figures/toy/{f}_{op}.png" for op in run.ops for f in ("heuristics", "heuristic_maps")),
        "toy/checkpoint_heuristics.parquet", "figures/toy/checkpoint_heuristics.png",
        *(f"tables/{t}.html" for t in ("accuracy", "circuit_cpr", "heuristic_neurons", "paper_circuits", "provenance")),
        *(feature_outputs(run) if run.features else []),
    ]


def feature_outputs(run: Run) -> list[str]:
    """The feature-circuit stage's outputs for the toy (the tiny configs give it to the toy only)."""
    return [
        "toy/features/quality.parquet", "figures/toy/features/dictionary_quality.png",
        "toy/features/interventions.parquet", "toy/features/intervention_patterns.parquet",
        *(f"toy/features/dictionaries/{site}{layer}/dictionary.safetensors" for site in ("mlp", "attn")
          for layer in range(run.n_layers)),
        *(f"toy/features/graphs/{op}/{f}" for op in run.ops for f in ("graph_0.pt", "graph_0.json",
                                                                     "graph-metadata.json")),
        *(f"toy/features/{op}/{t}.parquet" for op in run.ops for t in ("graph_nodes", "graph_edges", "graph_scores",
                                                                      "faithfulness", "ablation")),
        *(f"toy/features/heuristics/{op}{t}.parquet" for op in run.ops
          for t in ("", "_maps", "_comparison", "_splits", "_knockout")),
        *(f"figures/toy/features/{f}_{op}.png" for op in run.ops for f in ("graph", "faithfulness", "heuristics",
                                                                            "feature_maps")),
        "tables/feature_circuits.html",
    ]


def test_outputs_exist(run):
    missing = [rel for rel in expected_outputs(run) if not (run.results / rel).exists()
               or (run.results / rel).is_file() and (run.results / rel).stat().st_size == 0]
    assert not missing, missing


def test_prompt_sets_are_sane(run):
    for model in ("toy", "toy-lora"):
        for op in run.ops:
            prompts = pd.read_parquet(run.results / model / "prompts" / f"{op}.parquet")
            answers = pd.read_parquet(run.results / model / "answers" / f"{op}.parquet")
            assert len(prompts) == 5
            assert (prompts["corrupt_answer"] != prompts["answer"]).all()
            assert set(prompts["prompt"]) <= set(answers[answers["correct"]]["prompt"])
            assert prompts["operator"].eq(op).all() and prompts["model"].eq(model).all()


def test_accuracy_tables_are_sane(run):
    toy = pd.read_parquet(run.results / "toy" / "accuracy.parquet")
    assert sorted(toy["operator"]) == sorted(run.ops)
    assert toy["accuracy"].between(0, 1).all() and (toy["accuracy"] > 0.5).all()
    steps = pd.read_parquet(run.results / "toy" / "checkpoint_accuracy.parquet")
    assert tuple(sorted(steps["step"].unique())) == run.steps
    # the final checkpoint's accuracy equals the model's accuracy table (same prompts, same model)
    final = steps[steps["step"] == run.steps[-1]].set_index("operator")["accuracy"]
    assert final.to_dict() == pytest.approx(toy.set_index("operator")["accuracy"].to_dict())
    assert steps[steps["step"] == 0]["accuracy"].max() < 0.2  # an untrained model does not do arithmetic
    finetune = pd.read_parquet(run.results / "models" / "toy-lora" / "finetune.parquet")
    assert set(finetune["stage"]) == {"base", "finetuned"}


def test_circuit_tables_are_sane(run):
    import numpy as np

    from circuitflow.circuits import Graph

    for op in run.ops:
        curve = pd.read_parquet(run.results / "toy" / "circuits" / op / "faithfulness.parquet")
        assert set(curve["method"]) == set(run.methods)
        full = curve[curve["fraction"] == 1.0]  # one row per (method, level): the whole model at every level
        assert len(full) == len(curve.groupby(["method", "level"])) > len(run.methods)
        assert full["faithfulness"].tolist() == pytest.approx([1.0] * len(full), abs=1e-4)
        assert (curve["metric_full"] > curve["metric_empty"]).all()  # logit difference drops when all is patched
        agreement = pd.read_parquet(run.results / "toy" / "circuits" / op / "agreement.parquet")
        assert sorted(agreement["method"]) == sorted(m for m in run.methods if m != "exact")
        assert agreement["pearson"].between(-1, 1).all()
        graph = Graph.load(run.results / "toy" / "graphs" / op / "EAP-IG-inputs.pt")
        assert graph.meta["operator"] == op and graph.scores.abs().sum() > 0
        assert np.isfinite(graph.scores.numpy()).all()
    assert (~pd.read_parquet(run.results / "toy-lora" / "accuracy.parquet")["accuracy"].isna()).all()
    assert not (run.results / "toy-lora" / "graphs").exists()  # circuits.models limits the analysis to the toy


def test_localization_tables_are_sane(run):
    import numpy as np

    components = run.n_layers * (run.n_heads + 1)  # every query head and the MLP of each layer
    for op in run.ops:
        ie_map = pd.read_parquet(run.results / "toy" / "ie_maps" / f"{op}.parquet")
        assert len(ie_map) == run.seeds * components * 4 and ie_map["seed"].nunique() == run.seeds  # × positions
        assert np.isfinite(ie_map["ie"]).all()
        neurons = pd.read_parquet(run.results / "toy" / "neurons" / f"{op}.parquet")
        assert len(neurons) == run.n_layers * run.d_mlp
        exact = neurons["exact_ie"].dropna()  # layer 1 (localization.exact_neuron_layers) patched exactly
        assert len(exact) == run.d_mlp and np.isfinite(exact).all()
        assert (neurons["importance"] >= neurons["attribution_mean"]).all()
        probes = pd.read_parquet(run.results / "toy" / "probes" / f"{op}.parquet")
        assert probes["accuracy"].between(0, 1).all() and set(probes["layer"]) == set(range(run.n_layers + 1))
        circuits = pd.read_parquet(run.results / "toy" / "paper_circuits" / f"{op}.parquet").set_index("circuit")
        assert circuits.loc["full", "faithfulness"] == pytest.approx(1.0)
        assert circuits.loc["empty", "faithfulness"] == pytest.approx(0.0, abs=1e-9)
        assert sorted(circuits.loc["top", "k"]) == sorted({*run.neurons_per_layer, run.d_mlp})
        attention = pd.read_parquet(run.results / "toy" / "attention" / f"{op}.parquet")
        assert attention["attention"].between(0, 1).all()
        assert len(attention[["layer", "head"]].drop_duplicates()) == 2


def test_heuristics_tables_are_sane(run):
    for op in run.ops:
        layer = pd.read_parquet(run.results / "toy" / "paper_circuits" / f"{op}.parquet")["heuristics_layer"].iloc[0]
        table = pd.read_parquet(run.results / "toy" / "heuristics" / f"{op}.parquet")
        assert (table["layer"] >= layer).all() and table["score"].between(0, 1).all()
        assert (table["matched"] == (table["score"] >= 0.6)).all()
        assert table.groupby(["layer", "neuron"]).size().max() >= 3  # at least the 3 best heuristics per neuron
        assert (table.groupby("layer")["neuron"].nunique() <= run.heuristic_neurons).all()
        prompt_knockout = pd.read_parquet(run.results / "toy" / "heuristics" / f"{op}_prompt_knockout.parquet")
        assert tuple(prompt_knockout["neurons_per_layer"]) == run.knockout_neurons
        assert prompt_knockout[["accuracy", "accuracy_random"]].stack().between(0, 1).all()
        knockout = pd.read_parquet(run.results / "toy" / "heuristics" / f"{op}_knockout.parquet")
        assert (knockout["n_neurons"] >= 2).all()  # heuristics.knockout_min_neurons
        maps = pd.read_parquet(run.results / "toy" / "heuristics" / f"{op}_maps.parquet")
        answers = pd.read_parquet(run.results / "toy" / "answers" / f"{op}.parquet")
        assert len(maps) == len(maps[["layer", "neuron"]].drop_duplicates()) * len(answers)


def test_feature_tables_are_sane(run):
    if not run.features:
        pytest.skip("this config turns the feature-circuit stage off (features.enabled: false)")
    quality = pd.read_parquet(run.results / "toy" / "features" / "quality.parquet")
    pooled = quality[quality["operator"] == "all"]
    names = [f"{site}{layer}" for site in ("mlp", "attn") for layer in range(run.n_layers)]
    assert sorted(pooled["dictionary"]) == sorted(names)
    assert pooled["nmse"].between(0, 0.2).all() and (pooled["l0"] > 0).all()
    assert set(quality["operator"]) == {*run.ops, "all"}
    for op in run.ops:
        folder = run.results / "toy" / "features" / op
        scores = pd.read_parquet(folder / "graph_scores.parquet")
        assert (scores["completeness_error"] < 1e-4).all()
        assert scores[["replacement_score", "completeness_score"]].stack().between(0, 1).all()
        curve = pd.read_parquet(folder / "faithfulness.parquet")
        for _, one in curve.groupby("graph"):  # anchored by construction
            one = one.sort_values("n_features")
            assert one["faithfulness"].iloc[0] == 0 and one["faithfulness"].iloc[-1] == pytest.approx(1)
        ablation = pd.read_parquet(folder / "ablation.parquet")
        assert (ablation["pearson_frozen"] > 0.5).all()
        nodes = pd.read_parquet(folder / "graph_nodes.parquet")
        assert nodes["kept"].any() and set(nodes["kind"]) == {"feature", "error", "embedding", "logit"}
        edges = pd.read_parquet(folder / "graph_edges.parquet")  # LEAP's types: attention features have OV inputs
        assert {"OV", "direct"} <= set(edges["type"]) and set(edges["type"]) <= {"OV", "direct", "Q", "K"}
        shares = scores[["ov_share", "q_share", "k_share"]]
        assert shares.sum(axis=1).round(9).eq(1).all() and (shares["ov_share"] > 0).all()
        comparison = pd.read_parquet(run.results / "toy" / "features" / "heuristics" / f"{op}_comparison.parquet")
        assert set(comparison["site"]) == {"mlp", "attn"} and comparison["share_neurons"].between(0, 1).all()
    effects = pd.read_parquet(run.results / "toy" / "features" / "interventions.parquet")
    configured = yaml.safe_load(run.configfile.read_text())["features"].get("interventions", [])
    assert set(effects["operator"]) == (set(run.ops) if configured else set())


def test_checkpoint_heuristics_end_where_the_final_model_is(run):
    steps = pd.read_parquet(run.results / "toy" / "checkpoint_heuristics.parquet")
    assert tuple(sorted(steps["step"].unique())) == run.steps
    assert set(steps["operator"]) == set(run.ops)
    assert len(steps) == len(run.steps) * len(run.ops) * len(run.knockout_neurons)
    final = steps[steps["step"] == run.steps[-1]]
    # the last checkpoint is the final model: the same neurons, the same matches, the same knockout
    assert final["final_matches_present"].fillna(1.0).eq(1.0).all()
    for op, rows in final.groupby("operator"):
        own = pd.read_parquet(run.results / "toy" / "heuristics" / f"{op}_prompt_knockout.parquet")
        assert rows["knockout_accuracy"].tolist() == pytest.approx(own["accuracy"].tolist(), nan_ok=True)


def test_checkpoint_ie_maps_cover_every_checkpoint_and_operator(run):
    steps = pd.read_parquet(run.results / "toy" / "checkpoint_ie_maps.parquet")
    assert tuple(sorted(steps["step"].unique())) == run.steps
    assert set(steps["operator"]) == set(run.ops)
    # checkpoints × operators × components × positions (first seed only)
    assert len(steps) == len(run.steps) * len(run.ops) * run.n_layers * (run.n_heads + 1) * 4


def test_report_items(run):
    pages = {p.name: p.read_text() for p in (run.results / "tables").glob("*.html")}
    assert sorted(pages) == ["accuracy.html", "circuit_cpr.html", "feature_circuits.html", "heuristic_neurons.html",
                             "paper_circuits.html", "provenance.html"]
    ran = {name: text for name, text in pages.items() if run.features or name != "feature_circuits.html"}
    assert all("<table" in text for text in ran.values())
    assert "toy-lora" in pages["accuracy.html"] and "EAP-IG-inputs" in pages["circuit_cpr.html"]


def test_results_are_readable_by_the_group(run):
    """Every output gets the umask's modes (atomic writes go through private temp files): colleagues on a shared
    folder can open the report and tables."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    if umask & 0o040:
        pytest.skip(f"this umask ({umask:03o}) hides files from the group")
    private = [str(p.relative_to(run.results)) for p in run.results.rglob("*") if not p.stat().st_mode & 0o040]
    assert not private, f"not group-readable: {private[:10]}"


def test_figures_are_pngs(run):
    for png in (run.results / "figures").rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_does_nothing(run):
    before = {p: p.stat().st_mtime_ns for p in run.results.rglob("*.parquet")}
    again = snakemake(run.results.parent, run.configfile)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert before == {p: p.stat().st_mtime_ns for p in run.results.rglob("*.parquet")}


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "tests/configs/tiny.yaml").read_text().replace("k: 5", "k: 5\n  kk: 1"))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(bad), "--cores", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "config error: prompts.kk:" in done.stderr
    assert not (tmp_path / "results").exists()


def test_changed_param_reruns_only_dependent_jobs(run, tmp_path):
    changed = tmp_path / "changed.yaml"
    changed.write_text(run.configfile.read_text().replace("base_revision: step300", "base_revision: step0"))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(run.results.parent),
           "--configfile", str(changed), "--cores", "1", "-n"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = done.stdout + done.stderr
    assert "rule finetune_toy_lora:" in planned and "rule merge_lora:" in planned
    assert "train_toy:" not in planned  # Snakemake plans it as "checkpoint train_toy:"
