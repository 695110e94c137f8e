"""The feature_interventions stage (run_configured_interventions and workflow/scripts/feature_interventions.py) on a
tiny random gpt2 with random dictionaries and prompts of two token lengths, checked against single-prompt forwards
with hand-written hooks: each row's metric before/after, grab-and-delete as a hand subtraction, patterns per prompt
row; config errors name the field; the script writes labelled tables, empty ones when nothing is configured."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from snakemake.iocontainers import InputFiles, Log, OutputFiles, Params, Wildcards

from circuitflow.features.interventions import (
    EFFECT_COLUMNS,
    PATTERN_COLUMNS,
    intervene,
    run_configured_interventions,
)
from circuitflow.features.dictionary import save_dictionaries
from circuitflow.models import ModelHandle, load_bridge, load_tokenizer
from tests.conftest import save_tiny_model
from tests.unit.test_feature_interventions import hand_activation, random_dictionary

# mlp0 feature 2 is on at the last position of every prompt (so its grab-and-delete moves the metric)
SPECS = [{"dictionary": "mlp0", "feature": 2, "mode": "ablate", "positions": [-1]},
         {"dictionary": "attn0", "feature": 5, "mode": "steer", "value": 2.0},
         {"dictionary": "mlp1", "feature": 1, "mode": "set", "value": 1.5, "positions": [0, -2]}]
HEADS = [[1, 0], [1, 3]]
SCRIPT = Path(__file__).resolve().parents[2] / "workflow/scripts/feature_interventions.py"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.set_num_threads(2)
    path = save_tiny_model("gpt2", tmp_path_factory.mktemp("gpt2") / "model")
    handle = ModelHandle("tiny", str(path))
    return load_bridge(handle, device="cpu", dtype="float64"), load_tokenizer(handle), path


@pytest.fixture(scope="module")
def dictionaries():
    return {"mlp0": random_dictionary("mlp", 0, seed=1), "mlp1": random_dictionary("mlp", 1, seed=2),
            "attn0": random_dictionary("attn", 0, seed=3)}


def prompt_set(tokenizer, prompts: list[str], answers: list[str], corrupt: list[str]) -> pd.DataFrame:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (answers, corrupt)]
    return pd.DataFrame(dict(prompt=prompts, corrupt_prompt=prompts, answer_token=ids[0], corrupt_answer_token=ids[1]))


@pytest.fixture(scope="module")
def prompts(model):
    tokenizer = model[1]
    return {"add": prompt_set(tokenizer, ["3+4=", "1+2+3=", "5+6=", "2+2+2="], ["7", "6", "11", "6"],
                              ["8", "5", "9", "4"]),
            "sub": prompt_set(tokenizer, ["9-4=", "8-1="], ["5", "7"], ["4", "6"])}


@pytest.fixture(scope="module")
def tables(model, dictionaries, prompts):
    bridge, tokenizer, _ = model
    return run_configured_interventions(bridge, dictionaries, prompts, SPECS, HEADS, "logit_diff", tokenizer,
                                        batch_size=2)


def one_prompt(bridge, tokenizer, text: str, hooks=()):
    """Logits ``[1, pos, vocab]`` and layer 1's pattern ``[1, heads, q, k]`` of one prompt."""
    store = {}

    def keep(tensor, hook):
        store["pattern"] = tensor.detach().clone()

    tokens = torch.tensor([tokenizer(text)["input_ids"]])
    with bridge.hooks(fwd_hooks=[*hooks, ("blocks.1.attn.hook_pattern", keep)]):
        logits = bridge(tokens)
    return logits.detach(), store["pattern"], tokens


def logit_diff(logits, row) -> float:
    return float(logits[0, -1, row.answer_token] - logits[0, -1, row.corrupt_answer_token])


def test_metric_rows_match_single_prompt_runs(model, dictionaries, prompts, tables):
    bridge, tokenizer, _ = model
    effects, _ = tables
    assert list(effects.columns) == EFFECT_COLUMNS
    joint = effects[(effects["quantity"] == "logit_diff") & (effects["intervention"] == -1)]
    assert sorted(map(tuple, joint[["operator", "prompt"]].to_numpy())) == sorted(
        (op, i) for op, frame in prompts.items() for i in range(len(frame)))
    for (op, i), row in joint.set_index(["operator", "prompt"]).iterrows():
        frame_row = prompts[op].iloc[i]
        clean, _, _ = one_prompt(bridge, tokenizer, frame_row.prompt)
        with intervene(bridge, dictionaries, SPECS):
            edited, _, _ = one_prompt(bridge, tokenizer, frame_row.prompt)
        assert row["before"] == pytest.approx(logit_diff(clean, frame_row), abs=1e-9)
        assert row["after"] == pytest.approx(logit_diff(edited, frame_row), abs=1e-9)
        assert row["change"] == pytest.approx(row["after"] - row["before"], abs=1e-12)
    assert not np.allclose(joint["change"], 0)


def test_grab_and_delete_rows_subtract_the_feature_by_hand(model, dictionaries, prompts, tables):
    bridge, tokenizer, _ = model
    effects, _ = tables
    grabs = effects[effects["quantity"] == "grab_and_delete"]
    # mlp0 and attn0 are in layer 0 < n_layers - 1 = 1; mlp1 (the last layer) has none
    assert sorted(grabs["intervention"].unique()) == [0, 1]
    assert set(grabs["layer"]) == {1}
    d = dictionaries["mlp0"]
    for (op, i), row in grabs[grabs["intervention"] == 0].set_index(["operator", "prompt"]).iterrows():
        frame_row = prompts[op].iloc[i]
        store = {}

        def read(tensor, hook):
            store["a"] = hand_activation(d, tensor[0, -1], 2)

        def delete(tensor, hook):
            out = tensor.clone()
            out[0, -1] -= store["a"] * d.W_dec[2]
            return out

        clean, _, _ = one_prompt(bridge, tokenizer, frame_row.prompt)
        deleted, _, _ = one_prompt(bridge, tokenizer, frame_row.prompt,
                                   [("blocks.0.mlp.hook_in", read), ("blocks.1.hook_in", delete)])
        assert float(store["a"]) > 0
        assert row["before"] == pytest.approx(logit_diff(clean, frame_row), abs=1e-9)
        assert row["after"] == pytest.approx(logit_diff(deleted, frame_row), abs=1e-9)
        assert row["head"] == -1 and row["label"] == "mlp0 #2 @ -1 → block 1"


def test_patterns_are_per_prompt_row(model, dictionaries, prompts, tables):
    bridge, tokenizer, _ = model
    effects, patterns = tables
    assert list(patterns.columns) == ["operator", *PATTERN_COLUMNS]
    op, i = "add", 1  # "1+2+3=": the longer group, second row of the prompt set
    text = prompts[op].iloc[i].prompt
    _, before, tokens = one_prompt(bridge, tokenizer, text)
    with intervene(bridge, dictionaries, SPECS):
        _, after, _ = one_prompt(bridge, tokenizer, text)
    rows = patterns[(patterns["operator"] == op) & (patterns["prompt"] == i) & (patterns["head"] == 3)]
    n = tokens.shape[1]
    assert len(rows) == n * (n + 1) // 2
    query, key = rows["query"].to_numpy(copy=True), rows["key"].to_numpy(copy=True)
    np.testing.assert_allclose(rows["before"], before[0, 3][query, key].numpy(), atol=1e-12)
    np.testing.assert_allclose(rows["after"], after[0, 3][query, key].numpy(), atol=1e-12)
    change = effects[(effects["quantity"] == "pattern_change") & (effects["operator"] == op)
                     & (effects["prompt"] == i) & (effects["head"] == 3)]["change"]
    assert float(change.iloc[0]) == pytest.approx(float((after[0, 3, -1] - before[0, 3, -1]).abs().mean()), abs=1e-12)


@pytest.mark.parametrize("specs, heads, message", [
    ([SPECS[0], {"dictionary": "mlp0", "feature": 1, "mode": "set"}], HEADS, r"features\.interventions\[1\]: "),
    ([{"dictionary": "mlp0", "feature": 16}], HEADS, r"features\.interventions\[0\]\.feature: 16 .*0\.\.15"),
    ([{"dictionary": "attn1", "feature": 0}], HEADS, r"features\.interventions\[0\]\.dictionary: 'attn1'"),
    ([{"dictionary": "mlp0", "feature": 0, "positions": [5]}], HEADS, r"features\.interventions\[0\]\.positions"),
    (SPECS, [[1, 0], [2, 0]], r"features\.pattern_heads\[1\]: \[2, 0\]"),
    (SPECS, [[0, 4]], r"features\.pattern_heads\[0\]"),
])
def test_config_errors_name_the_field(model, dictionaries, prompts, specs, heads, message):
    bridge, tokenizer, _ = model
    with pytest.raises(ValueError, match=message) as err:
        run_configured_interventions(bridge, dictionaries, prompts, specs, heads, "logit_diff", tokenizer)
    assert "\n" not in str(err.value)


def test_no_interventions_gives_empty_typed_tables(model, dictionaries, prompts):
    bridge, tokenizer, _ = model
    effects, patterns = run_configured_interventions(bridge, dictionaries, prompts, [], HEADS, "logit_diff", tokenizer)
    assert effects.empty and patterns.empty
    assert list(effects.columns) == EFFECT_COLUMNS and list(patterns.columns) == ["operator", *PATTERN_COLUMNS]
    assert effects["change"].dtype == np.float64 and patterns["query"].dtype == np.int64


def run_script(tmp_path: Path, model_path: Path, dictionaries, prompts, interventions) -> tuple[pd.DataFrame, ...]:
    """Run the workflow script as Snakemake would (a ``snakemake`` object with input, output, params, ...)."""
    handle = tmp_path / "results/tiny/model.json"
    handle.parent.mkdir(parents=True)
    handle.write_text(json.dumps({"name": "tiny", "path": str(model_path), "revision": "main", "source": "local"}))
    save_dictionaries(dictionaries, tmp_path / "dictionaries")
    paths = []
    for op, frame in prompts.items():
        paths.append(str(tmp_path / f"{op}.parquet"))
        frame.to_parquet(paths[-1])
    out = {"effects": str(tmp_path / "effects.parquet"), "patterns": str(tmp_path / "patterns.parquet")}
    config = {"device": "cpu", "device_map": None, "batch_size": 3, "circuits": {"batch_size": 3},
              "localization": {"batch_size": 3}}
    params = {"interventions": interventions, "heads": HEADS, "metric": "logit_diff", "dtype": "float64",
              "code": "0123456789ab"}
    snakemake = SimpleNamespace(
        input=InputFiles(fromdict={"handle": str(handle), "dictionaries": str(tmp_path / "dictionaries"),
                                   "prompts": paths}),
        output=OutputFiles(fromdict=out), params=Params(fromdict=params),
        wildcards=Wildcards(fromdict={"model": "tiny"}),
        log=Log([str(tmp_path / "job.log")]), threads=1, config=config)
    runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake})
    return pd.read_parquet(out["effects"]), pd.read_parquet(out["patterns"]), (tmp_path / "job.log").read_text()


def test_script_writes_the_labelled_tables(tmp_path, model, dictionaries, prompts, tables):
    effects, patterns, _ = run_script(tmp_path, model[2], dictionaries, prompts, SPECS)
    for written, expected in zip((effects, patterns), tables):
        assert list(written.columns) == ["model", "revision", *expected.columns]
        assert (written["model"] == "tiny").all() and (written["revision"] == "main").all()
        pd.testing.assert_frame_equal(written.drop(columns=["model", "revision"]), expected, check_dtype=False,
                                      atol=1e-9)


def test_script_without_interventions_writes_empty_tables(tmp_path, model, dictionaries, prompts):
    effects, patterns, log = run_script(tmp_path, model[2], dictionaries, prompts, [])
    assert effects.empty and patterns.empty
    assert list(effects.columns) == ["model", "revision", *EFFECT_COLUMNS]
    assert list(patterns.columns) == ["model", "revision", "operator", *PATTERN_COLUMNS]
    assert "no feature interventions configured" in log
