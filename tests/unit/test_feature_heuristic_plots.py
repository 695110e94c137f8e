"""Heuristics as features, the workflow stage and its figures: the neurons rebuilt from their classification table
carry the original classification's masks; the stage's script on the toy model writes labelled tables equal to its
parts run with the original neurons, and the plot script draws them; the figures draw what hand-made tables say (and
draw empty tables without failing)."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.patches import Polygon
from snakemake.iocontainers import InputFiles, Log, OutputFiles, Params, Wildcards

from circuitflow.arithmetic import answers as true_answers
from circuitflow.arithmetic import legal_pairs
from circuitflow.features.dictionary import DictionaryInfo, SparseDictionary, save_dictionaries
from circuitflow.features.heuristic_features import (
    classified_from_table,
    classify_features,
    compare_with_neurons,
    knockout_comparison,
)
from circuitflow.features.heuristic_plots import feature_heuristic_summary, feature_maps, operand_grid
from circuitflow.heuristics import HeuristicSpec
from circuitflow.heuristics.matching import classify
from circuitflow.plots import save_figure

SCRIPTS = Path(__file__).resolve().parents[2] / "workflow/scripts"
SPEC = HeuristicSpec(range_sizes=(4,), moduli=(2, 3), min_prompts=3, max_coverage=0.5)


def grid_answers(top: int = 20) -> pd.DataFrame:
    pairs = legal_pairs("add", top, top)
    answer = true_answers("add", pairs[:, 0], pairs[:, 1])
    return pd.DataFrame(dict(op1=pairs[:, 0], op2=pairs[:, 1], answer=answer, correct=answer % 4 != 1))


def test_neurons_rebuilt_from_their_table_have_the_classifications_masks():
    answers = grid_answers()
    gen = torch.Generator().manual_seed(0)
    acts = torch.rand(len(answers), 6, generator=gen, dtype=torch.double)
    acts[:, 0] += torch.from_numpy(answers["op1"].to_numpy() % 3 == 0)  # an operand heuristic
    acts[:, 1] += 2 * torch.from_numpy(np.isin(answers["answer"].to_numpy(), [7, 19, 23]))  # a favourite-result set
    logits = torch.ones(len(answers), 6, dtype=torch.double)
    ids = torch.stack([torch.full((6,), 2), torch.arange(6)], 1)
    found = classify(acts, logits, ids, *(answers[c].to_numpy() for c in ("op1", "op2", "answer")), spec=SPEC,
                     null_permutations=3)
    assert found.table["heuristic"].str.startswith("result_set_{").any()
    chosen = pd.DataFrame(dict(layer=2, neuron=np.arange(6), importance=np.linspace(1, 0, 6), rank=np.arange(6)))
    table = found.table.merge(chosen, on=["layer", "neuron"]).assign(model="toy", operator="add")  # as written
    rebuilt = classified_from_table(table, answers, SPEC)
    assert rebuilt.found.masks.keys() == found.masks.keys()
    for name, mask in found.masks.items():
        assert (rebuilt.found.masks[name] == mask).all(), name
    assert rebuilt.chosen.to_dict("list") == chosen.to_dict("list")
    assert (rebuilt.correct == answers["correct"].to_numpy()).all() and rebuilt.activations.shape == (len(answers), 6)
    assert "op1_mod_0mod3" in found.masks
    with pytest.raises(ValueError, match="heuristics spec"):  # classified with other moduli
        classified_from_table(table, answers, HeuristicSpec(range_sizes=(4,), moduli=(2,), min_prompts=3,
                                                             max_coverage=0.5))


def dictionary(site: str, layer: int, seed: int) -> SparseDictionary:
    d = SparseDictionary(DictionaryInfo(site, layer, "relu", 0), 32, 32, 16, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (d.W_enc, d.W_dec, d.b_enc):
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return d


def run_script(name: str, tmp_path: Path, inputs: dict, outputs: dict, params: dict) -> str:
    """Run a workflow script as Snakemake would (a ``snakemake`` object with input, output, params, ...); its log."""
    config = {"device": "cpu", "device_map": None, "batch_size": 64, "circuits": {"batch_size": 64},
              "localization": {"batch_size": 64}}
    snakemake = SimpleNamespace(input=InputFiles(fromdict=inputs), output=OutputFiles(fromdict=outputs),
                                params=Params(fromdict={**params, "code": "0123456789ab"}),
                                wildcards=Wildcards(fromdict={"model": "toy", "op": "add"}),
                                log=Log([str(tmp_path / f"{name}.log")]), threads=1, config=config)
    runpy.run_path(str(SCRIPTS / f"{name}.py"), init_globals={"snakemake": snakemake})
    return (tmp_path / f"{name}.log").read_text()


def test_the_stage_scripts_on_the_toy_model_equal_the_parts_with_the_original_neurons(tmp_path, toy_handle):
    from circuitflow.circuits import Tracer
    from circuitflow.heuristics.analysis import classify_top_neurons
    from circuitflow.models import load_bridge, load_hf_model, load_tokenizer, write_handle
    from circuitflow.prompts import PromptConfig, evaluate_operator

    bridge, tokenizer = load_bridge(toy_handle, device="cpu", dtype="float64"), load_tokenizer(toy_handle)
    answers = evaluate_operator(load_hf_model(toy_handle, "cpu"), tokenizer, "add", PromptConfig(operand_max=12), 12)
    dictionaries = [dictionary("mlp", 0, 0), dictionary("attn", 1, 1), dictionary("mlp", 1, 2)]
    importance = pd.DataFrame(dict(layer=np.repeat([0, 1], 64), neuron=np.tile(np.arange(64), 2),
                                   importance=np.random.default_rng(0).random(128)))
    neurons = classify_top_neurons(Tracer(bridge), tokenizer, answers, importance, 0, 32, spec=SPEC,
                                   null_permutations=3)
    inputs = {"handle": tmp_path / "toy.json", "dictionaries": tmp_path / "dictionaries",
              "answers": tmp_path / "answers.parquet", "neurons": tmp_path / "neurons.parquet"}
    write_handle(toy_handle, inputs["handle"])
    save_dictionaries({d.info.name: d for d in dictionaries}, inputs["dictionaries"])
    answers.to_parquet(inputs["answers"])
    neurons.table.assign(model="toy", revision="step150", operator="add").to_parquet(inputs["neurons"])
    keys = ("table", "maps", "comparison", "splits", "knockout")
    outputs = {key: str(tmp_path / f"{key}.parquet") for key in keys}
    heur = dict(threshold=0.6, two_sided=False, null_permutations=3, max_prompts=10, map_neurons=2,
                range_sizes=[4], moduli=[2, 3], value_set_sizes=[2, 3, 4, 5], max_coverage=0.5, min_prompts=3)
    log = run_script("feature_heuristics", tmp_path, {k: str(v) for k, v in inputs.items()}, outputs,
                     dict(features=dict(features_per_dictionary=4, knockout_min_units=1), heur=heur, seed=0,
                          dtype="float64"))
    written = {key: pd.read_parquet(path) for key, path in outputs.items()}
    for frame in written.values():
        assert list(frame.columns[:3]) == ["model", "revision", "operator"] and (frame["model"] == "toy").all()
    result = {key: frame.drop(columns=["model", "revision", "operator"]) for key, frame in written.items()}
    assert "mlp0 (transcoder), attn1 (attention SAE), mlp1 (transcoder)" in log and "median specificity" in log

    found = classify_features(bridge, tokenizer, answers, dictionaries, 4, spec=SPEC, null_permutations=3, seed=0)
    pd.testing.assert_frame_equal(result["table"], found.table, check_dtype=False)
    assert result["comparison"]["site"].tolist() == ["mlp", "attn"]
    for row in result["comparison"].to_dict("records"):  # each site's features against all neurons
        expected = compare_with_neurons(found.table[found.table["site"] == row["site"]], neurons.table)
        assert row == {"site": row["site"], **expected.drop(columns="operator").iloc[0].to_dict()}
    expected = knockout_comparison(bridge, tokenizer, answers, found, neurons, dictionaries, min_features=1,
                                   min_neurons=1, max_prompts=10, seed=0)  # with the neurons' own masks
    assert len(expected)
    pd.testing.assert_frame_equal(result["knockout"], expected, check_dtype=False)
    assert result["maps"].drop_duplicates(["dictionary", "feature"]).shape[0] == 2
    assert set(result["splits"]["layer"]) <= {0, 1} and result["splits"]["n_features_cosine"].notna().all()

    figures = {"summary": str(tmp_path / "summary.png"), "maps": str(tmp_path / "maps.png")}
    run_script("plot_feature_heuristics", tmp_path, outputs, figures, {})
    assert all(Path(path).stat().st_size > 0 for path in figures.values())


def hand_tables():
    comparison = pd.DataFrame(dict(site=["mlp", "attn"], n_features=[8, 4], n_heuristic_features=[6, 1],
                                   share_features=[0.75, 0.25], n_heuristics_features=[5, 1], n_neurons=[10, 10],
                                   n_heuristic_neurons=[4, 4], share_neurons=[0.4, 0.4],
                                   n_heuristics_neurons=[3, 3]))
    splits = pd.DataFrame(dict(layer=[1, 1, 1, 0], neuron=[3, 5, 9, 2], heuristics=["a", "b", "a,b", "c"],
                               n_features_same_heuristic=[0, 2, 2, 1], n_features_cosine=[1.0, 1.0, 3.0, np.nan]))
    knockout = pd.DataFrame(dict(heuristic=["op1_mod_0mod3", "result_range_4_8"], n_features=[2, 5],
                                 n_neurons=[3, 1], n_prompts=[10, 6], specificity_features=[0.5, -0.1],
                                 specificity_neurons=[0.2, 0.3]))
    return comparison, splits, knockout


def step_heights(ax, label: str) -> dict[int, float]:
    """The count a step histogram labelled ``label`` draws per bin (unit bins centred on integers): the height of each
    horizontal segment of its outline, by the integer at the segment's middle."""
    xy = next(p for p in ax.patches if isinstance(p, Polygon) and p.get_label() == label).get_xy()
    return {int(round((x1 + x2) / 2)): y1 for (x1, y1), (x2, y2) in zip(xy[:-1], xy[1:]) if y1 == y2 and x2 > x1}


def test_the_summary_draws_the_tables(tmp_path):
    comparison, splits, knockout = hand_tables()
    fig = feature_heuristic_summary(comparison, splits, knockout, "toy, +")
    shares, split_ax, knock = fig.axes[:3]
    assert [b.get_height() for b in shares.containers[0]] == [0.75, 0.25, 0.4]
    assert [t.get_text() for t in shares.get_xticklabels()] == ["transcoder features", "attention SAE features",
                                                                "MLP neurons"]
    assert [t.get_text() for t in shares.texts] == ["6 of 8", "1 of 4", "4 of 10"]
    same = np.bincount(splits["n_features_same_heuristic"])  # [1, 1, 2]: counts per number of features
    cosine = np.bincount(splits["n_features_cosine"].dropna().astype(int))  # [0, 2, 0, 1]
    lines = [t.get_text() for t in split_ax.get_legend().get_texts()]
    assert len(lines) == 2
    drawn_same, drawn_cosine = (step_heights(split_ax, label) for label in lines)
    assert all(drawn_same.get(k, 0) == v for k, v in enumerate(same))
    assert all(drawn_cosine.get(k, 0) == v for k, v in enumerate(cosine))
    offsets = knock.collections[0].get_offsets()
    assert np.asarray(offsets).tolist() == [[0.2, 0.5], [0.3, -0.1]]
    assert {t.get_text() for t in knock.texts} == set(knockout["heuristic"])
    assert all(ax.get_title() and ax.get_ylabel() for ax in (shares, split_ax, knock))
    save_figure(fig, tmp_path / "summary.png")
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_the_figures_draw_empty_tables(tmp_path):
    comparison, splits, knockout = (frame.iloc[:0] for frame in hand_tables())
    fig = feature_heuristic_summary(comparison, splits, knockout, "toy, +")
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == [
        "no comparison", "no heuristic neuron with a transcoder", "no heuristic shared by enough features and neurons"]
    save_figure(fig, tmp_path / "summary.png")
    maps = pd.DataFrame(columns=["dictionary", "site", "layer", "feature", "importance", "rank", "best_heuristic",
                                 "best_score", "op1", "op2", "answer", "activation"])
    fig = feature_maps(maps, "toy, +")
    assert fig.axes[0].texts[0].get_text() == "no feature to map"
    save_figure(fig, tmp_path / "maps.png")
    assert (tmp_path / "summary.png").stat().st_size > 0 and (tmp_path / "maps.png").stat().st_size > 0


def test_feature_maps_draw_each_features_activation_at_its_operands(tmp_path):
    answers = grid_answers(6)
    frames = [answers.assign(dictionary=name, site=name[:-1], layer=int(name[-1]), feature=feature,
                             best_heuristic=heuristic, best_score=score, activation=value)
              for name, feature, heuristic, score, value in
              (("mlp1", 7, "op1_mod_0mod3", 0.9, answers["op1"] % 3 == 0),
               ("attn0", 2, "result_range_4_8", 0.7, answers["answer"] * 0.5))]
    maps = pd.concat(frames, ignore_index=True)
    fig = feature_maps(maps, "toy, +")
    drawn = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in drawn] == ["mlp1.f7: op1_mod_0mod3 (0.90)", "attn0.f2: result_range_4_8 (0.70)"]
    for ax, frame in zip(drawn, frames):
        image = ax.images[0].get_array()
        expected = np.full((7, 7), np.nan)
        for a, b, v in zip(frame["op1"], frame["op2"], frame["activation"].astype(float)):
            expected[a, b] = v
        np.testing.assert_array_equal(np.ma.filled(image.astype(float), np.nan), expected)
        assert ax.get_xlabel() == "op2" and ax.get_ylabel() == "op1"
    save_figure(fig, tmp_path / "maps.png")
    assert (tmp_path / "maps.png").stat().st_size > 0
    plt.close("all")


def test_operand_grid_leaves_missing_pairs_blank():
    grid = operand_grid(np.array([0, 2]), np.array([1, 0]), np.array([5.0, 6.0]), (3, 2))
    np.testing.assert_array_equal(grid, [[np.nan, 5.0], [np.nan, np.nan], [6.0, np.nan]])
