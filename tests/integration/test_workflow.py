"""The workflow end to end on a seconds-scale config: every output exists and is sane; a rerun does nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    run = snakemake(workdir)
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir / "results"


METHODS = ("EAP", "EAP-IG-inputs", "EAP-IG-activations", "clean-corrupted", "exact")
EXPECTED = [
    "models/toy/model.json", "models/toy/checkpoints.json", "models/toy/training_log.parquet",
    "models/toy/checkpoints/step0/config.json", "models/toy/checkpoints/step600/model.safetensors",
    "models/toy-lora/adapter/adapter_config.json", "models/toy-lora/adapter_raw.safetensors",
    "models/toy-lora/finetune.parquet", "models/toy-lora/merged/config.json", "models/toy-lora/model.json",
    "toy/accuracy.parquet", "toy-lora/accuracy.parquet", "toy/checkpoint_accuracy.parquet",
    "figures/accuracy.png", "figures/accuracy.pdf", "figures/toy/training.png",
    "figures/toy/checkpoint_accuracy.png",
    *(f"{m}/{kind}/{op}.parquet" for m in ("toy", "toy-lora") for kind in ("prompts", "answers")
      for op in ("add", "sub", "mul", "div")),
    *(f"logs/{rule}" for rule in ("train_toy", "prompts", "merge_lora", "finetune_toy_lora", "plot_accuracy",
                                   "attribute", "faithfulness", "draw_circuits")),
    *(f"toy/graphs/{op}/{m}.{ext}" for op in ("add", "sub", "mul", "div") for m in METHODS for ext in ("pt", "json")),
    *(f"toy/circuits/{op}/{t}.parquet" for op in ("add", "sub", "mul", "div")
      for t in ("faithfulness", "areas", "agreement")),
    *(f"figures/toy/circuits/{op}/{m}.png" for op in ("add", "sub", "mul", "div") for m in METHODS),
    *(f"figures/toy/faithfulness_{op}.{ext}" for op in ("add", "sub", "mul", "div") for ext in ("png", "pdf")),
    *(f"toy/{t}/{op}.parquet" for op in ("add", "sub", "mul", "div")
      for t in ("ie_maps", "neurons", "probes", "paper_circuits", "attention")),
    *(f"toy/attention/{op}_ov.parquet" for op in ("add", "sub", "mul", "div")),
    *(f"figures/toy/{f}_{op}.png" for op in ("add", "sub", "mul", "div")
      for f in ("ie_map", "neurons", "probes", "attention")),
    "figures/toy/paper_faithfulness.png", "figures/toy/paper_faithfulness.pdf",
    "toy/checkpoint_ie_maps.parquet", "figures/toy/checkpoint_ie.png",
    *(f"toy/heuristics/{op}{t}.parquet" for op in ("add", "sub", "mul", "div")
      for t in ("", "_knockout", "_prompt_knockout", "_maps")),
    *(f"figures/toy/{f}_{op}.png" for op in ("add", "sub", "mul", "div") for f in ("heuristics", "heuristic_maps")),
    "toy/checkpoint_heuristics.parquet", "figures/toy/checkpoint_heuristics.png", "report.html",
]


@pytest.mark.parametrize("relative", EXPECTED)
def test_output_exists(results, relative):
    path = results / relative
    assert path.exists() and (path.is_dir() or path.stat().st_size > 0), relative


def test_prompt_sets_are_sane(results):
    for model in ("toy", "toy-lora"):
        for op in ("add", "sub", "mul", "div"):
            prompts = pd.read_parquet(results / model / "prompts" / f"{op}.parquet")
            answers = pd.read_parquet(results / model / "answers" / f"{op}.parquet")
            assert len(prompts) == 5
            assert (prompts["corrupt_answer"] != prompts["answer"]).all()
            assert set(prompts["prompt"]) <= set(answers[answers["correct"]]["prompt"])
            assert prompts["operator"].eq(op).all() and prompts["model"].eq(model).all()


def test_accuracy_tables_are_sane(results):
    toy = pd.read_parquet(results / "toy" / "accuracy.parquet")
    assert sorted(toy["operator"]) == ["add", "div", "mul", "sub"]
    assert toy["accuracy"].between(0, 1).all() and (toy["accuracy"] > 0.5).all()
    steps = pd.read_parquet(results / "toy" / "checkpoint_accuracy.parquet")
    assert sorted(steps["step"].unique()) == [0, 100, 300, 600]
    # the final checkpoint's accuracy equals the model's accuracy table (same prompts, same model)
    final = steps[steps["step"] == 600].set_index("operator")["accuracy"]
    assert final.to_dict() == pytest.approx(toy.set_index("operator")["accuracy"].to_dict())
    assert steps[steps["step"] == 0]["accuracy"].max() < 0.2  # an untrained model does not do arithmetic
    finetune = pd.read_parquet(results / "models" / "toy-lora" / "finetune.parquet")
    assert set(finetune["stage"]) == {"base", "finetuned"}


def test_circuit_tables_are_sane(results):
    from circuitflow.circuits import Graph

    for op in ("add", "sub", "mul", "div"):
        curve = pd.read_parquet(results / "toy" / "circuits" / op / "faithfulness.parquet")
        assert set(curve["method"]) == set(METHODS)
        full = curve[curve["fraction"] == 1.0]
        assert full["faithfulness"].tolist() == pytest.approx([1.0] * len(METHODS), abs=1e-4)
        assert (curve["metric_full"] > curve["metric_empty"]).all()  # logit difference drops when all is patched
        agreement = pd.read_parquet(results / "toy" / "circuits" / op / "agreement.parquet")
        assert sorted(agreement["method"]) == sorted(m for m in METHODS if m != "exact")
        assert agreement["pearson"].between(-1, 1).all()
        graph = Graph.load(results / "toy" / "graphs" / op / "EAP-IG-inputs.pt")
        assert graph.meta["operator"] == op and graph.scores.abs().sum() > 0
        assert not pytest.importorskip("pandas").isna(graph.scores.numpy()).any()
    assert (~pd.read_parquet(results / "toy-lora" / "accuracy.parquet")["accuracy"].isna()).all()
    assert not (results / "toy-lora" / "graphs").exists()  # circuits.models limits the analysis to the toy


def test_localization_tables_are_sane(results):
    for op in ("add", "sub", "mul", "div"):
        ie_map = pd.read_parquet(results / "toy" / "ie_maps" / f"{op}.parquet")
        assert len(ie_map) == 2 * 2 * 5 * 4 and set(ie_map["seed"]) == {0, 1}  # seeds × layers × (heads+MLP) × pos
        assert ie_map["ie"].notna().all()
        neurons = pd.read_parquet(results / "toy" / "neurons" / f"{op}.parquet")
        assert len(neurons) == 2 * 256 and neurons["exact_ie"].notna().sum() == 256  # layer 1 patched exactly
        assert (neurons["importance"] >= neurons["attribution_mean"]).all()
        probes = pd.read_parquet(results / "toy" / "probes" / f"{op}.parquet")
        assert probes["accuracy"].between(0, 1).all() and set(probes["layer"]) == {0, 1, 2}
        circuits = pd.read_parquet(results / "toy" / "paper_circuits" / f"{op}.parquet").set_index("circuit")
        assert circuits.loc["full", "faithfulness"] == pytest.approx(1.0)
        assert circuits.loc["empty", "faithfulness"] == pytest.approx(0.0, abs=1e-9)
        assert sorted(circuits.loc["top", "k"]) == [1, 4, 16, 256]
        attention = pd.read_parquet(results / "toy" / "attention" / f"{op}.parquet")
        assert attention["attention"].between(0, 1).all()
        assert len(attention[["layer", "head"]].drop_duplicates()) == 2


def test_heuristics_tables_are_sane(results):
    for op in ("add", "sub", "mul", "div"):
        layer = pd.read_parquet(results / "toy" / "paper_circuits" / f"{op}.parquet")["heuristics_layer"].iloc[0]
        table = pd.read_parquet(results / "toy" / "heuristics" / f"{op}.parquet")
        assert (table["layer"] >= layer).all() and table["score"].between(0, 1).all()
        assert (table["matched"] == (table["score"] >= 0.6)).all()
        assert table.groupby(["layer", "neuron"]).size().max() >= 3  # at least the 3 best heuristics per neuron
        assert (table.groupby("layer")["neuron"].nunique() <= 16).all()  # heuristics.neurons_per_layer
        prompt_knockout = pd.read_parquet(results / "toy" / "heuristics" / f"{op}_prompt_knockout.parquet")
        assert prompt_knockout["neurons_per_layer"].tolist() == [1, 4]
        assert prompt_knockout[["accuracy", "accuracy_random"]].stack().between(0, 1).all()
        knockout = pd.read_parquet(results / "toy" / "heuristics" / f"{op}_knockout.parquet")
        assert (knockout["n_neurons"] >= 2).all()  # heuristics.knockout_min_neurons
        maps = pd.read_parquet(results / "toy" / "heuristics" / f"{op}_maps.parquet")
        answers = pd.read_parquet(results / "toy" / "answers" / f"{op}.parquet")
        assert len(maps) == len(maps[["layer", "neuron"]].drop_duplicates()) * len(answers)


def test_checkpoint_heuristics_end_where_the_final_model_is(results):
    steps = pd.read_parquet(results / "toy" / "checkpoint_heuristics.parquet")
    assert sorted(steps["step"].unique()) == [0, 100, 300, 600]
    assert set(steps["operator"]) == {"add", "sub", "mul", "div"}
    assert len(steps) == 4 * 4 * 2  # checkpoints × operators × heuristics.knockout_neurons_per_layer
    final = steps[steps["step"] == 600]
    # the last checkpoint is the final model: the same neurons, the same matches, the same knockout
    assert final["final_matches_present"].fillna(1.0).eq(1.0).all()
    for op, rows in final.groupby("operator"):
        own = pd.read_parquet(results / "toy" / "heuristics" / f"{op}_prompt_knockout.parquet")
        assert rows["knockout_accuracy"].tolist() == pytest.approx(own["accuracy"].tolist(), nan_ok=True)


def test_checkpoint_ie_maps_cover_every_checkpoint_and_operator(results):
    steps = pd.read_parquet(results / "toy" / "checkpoint_ie_maps.parquet")
    assert sorted(steps["step"].unique()) == [0, 100, 300, 600]
    assert set(steps["operator"]) == {"add", "sub", "mul", "div"}
    assert len(steps) == 4 * 4 * 2 * 5 * 4  # checkpoints × operators × layers × (heads + MLP) × positions (1 seed)


def test_report_shows_every_figure(results):
    text = (results / "report.html").read_text()
    figures = sorted((results / "figures").rglob("*.png"))
    assert text.count("data:image/png;base64,") == len(figures) > 50
    assert all(f"<b>{png.relative_to(results / 'figures').as_posix()}</b>" in text for png in figures)


def test_figures_are_pngs(results):
    for png in (results / "figures").rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_does_nothing(results):
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*.parquet")}
    run = snakemake(results.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Nothing to be done" in run.stdout + run.stderr
    assert before == {p: p.stat().st_mtime_ns for p in results.rglob("*.parquet")}


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "tests/configs/tiny.yaml").read_text().replace("k: 5", "k: 5\n  kk: 1"))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(bad), "--cores", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "config error: prompts: Additional properties are not allowed ('kk' was unexpected)" in run.stderr
    assert not (tmp_path / "results").exists()


def test_changed_param_reruns_only_dependent_jobs(results, tmp_path):
    changed = tmp_path / "changed.yaml"
    changed.write_text((ROOT / "tests/configs/tiny.yaml").read_text().replace("base_revision: step300",
                                                                              "base_revision: step100"))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(results.parent),
           "--configfile", str(changed), "--cores", "1", "-n"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    planned = run.stdout + run.stderr
    assert "rule finetune_toy_lora:" in planned and "rule merge_lora:" in planned
    assert "rule train_toy:" not in planned
