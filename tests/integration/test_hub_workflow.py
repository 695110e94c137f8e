"""The hub path end to end, offline: a tiny toy's checkpoints served as revisions of a repo from a fake ``HF_HOME``
(the cache layout ``snapshot_download`` leaves), ``HF_HUB_OFFLINE=1``, ``download_model`` -> ``prompts`` ->
``checkpoint_accuracy``. Handles name repo, revision and commit, never a path; the accuracies are those of the same
checkpoints loaded from their local folders; after ``HF_HOME`` moves, the handles resolve in the new place and a
job that loads the model reruns from it, alone, to the same numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from huggingface_hub import constants

from circuitflow.models import ModelHandle, load_hf_model, load_tokenizer, read_handle, read_handles
from circuitflow.prompts import PromptConfig, evaluate_operator, resolve_answer_max
from circuitflow.provenance import read_provenance
from tests.integration.conftest import ROOT, snakemake
from tests.integration.test_reruns import rules_in
from tests.unit.test_hub_offline import cache_repo

pytestmark = pytest.mark.workflow

CONFIG = ROOT / "tests/configs/hub.yaml"
REPO = "circuitflow-tests/toy"
REVISIONS = {"step0": 0, "step150": 150, "main": 150}  # main is the last checkpoint, as on Pythia's repos
TARGETS = ("results/hubtoy/prompts/add.parquet", "results/hubtoy/checkpoint_accuracy.parquet")


def local_answers(checkpoint: Path, cfg: PromptConfig) -> pd.DataFrame:
    """Every legal ``add`` prompt answered by the checkpoint loaded from its own folder, not through the hub."""
    handle = ModelHandle("local", str(checkpoint), None, "local")
    tokenizer = load_tokenizer(handle)
    return evaluate_operator(load_hf_model(handle, "cpu"), tokenizer, "add", cfg, resolve_answer_max(tokenizer, cfg))


def snapshot(hub: Path, commit: str) -> str:
    return str(hub / f"models--{REPO.replace('/', '--')}/snapshots" / commit)


def test_a_hub_model_runs_offline_from_the_cache_and_moves_with_it(toy_dir, tmp_path, monkeypatch):
    hub = tmp_path / "hf/hub"
    checkpoints = toy_dir / "checkpoints"
    commits = cache_repo(hub, REPO, {ref: {f.name: f.read_bytes() for f in (checkpoints / f"step{step}").iterdir()}
                                     for ref, step in REVISIONS.items()})
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    workdir = tmp_path / "work"
    run = snakemake(workdir, CONFIG, *TARGETS)
    assert run.returncode == 0, run.stderr[-4000:]

    models = workdir / "results/models/hubtoy"
    assert json.loads((models / "model.json").read_text()) == {
        "name": "hubtoy", "path": REPO, "revision": "main", "source": "hub",
        "provenance": {"repo_id": REPO, "commit": commits["main"]}}
    assert [(h["path"], h["revision"], h["provenance"]) for h in json.loads((models / "checkpoints.json").read_text())
            ] == [(REPO, ref, {"repo_id": REPO, "commit": commits[ref]}) for ref in ("step0", "step150")]
    for path in [*(workdir / "results").rglob("*.json"), *(workdir / "results").rglob("*.parquet")]:
        text = path.read_text() if path.suffix == ".json" else json.dumps(read_provenance(path))
        assert str(tmp_path) not in text, path

    cfg = PromptConfig(**yaml.safe_load(CONFIG.read_text())["prompts"])
    table = pd.read_parquet(workdir / "results/hubtoy/checkpoint_accuracy.parquet")
    assert table["revision"].tolist() == ["step0", "step150"]
    for row in table.itertuples():
        answers = local_answers(checkpoints / row.revision, cfg)
        assert (row.n_prompts, row.n_correct) == (len(answers), answers["correct"].sum()), row
    assert table["n_correct"].nunique() == 2  # the two revisions are different models
    final = local_answers(checkpoints / "step150", cfg)
    evaluated = pd.read_parquet(workdir / "results/hubtoy/answers/add.parquet")
    assert evaluated["predicted_token"].tolist() == final["predicted_token"].tolist()
    assert len(pd.read_parquet(workdir / "results/hubtoy/prompts/add.parquet")) == cfg.k

    moved = tmp_path / "elsewhere/hf"
    shutil.move(tmp_path / "hf", moved)
    monkeypatch.setenv("HF_HOME", str(moved))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(moved / "hub"))
    assert read_handle(models / "model.json").path == snapshot(moved / "hub", commits["main"])
    assert [h.path for h in read_handles(models / "checkpoints.json")] == [
        snapshot(moved / "hub", commits[ref]) for ref in ("step0", "step150")]
    rerun = snakemake(workdir, CONFIG, *TARGETS, "--forcerun", "checkpoint_accuracy")
    assert rules_in(rerun) == {"checkpoint_accuracy"}  # the handles and digest are up to date with the moved cache
    pd.testing.assert_frame_equal(pd.read_parquet(workdir / "results/hubtoy/checkpoint_accuracy.parquet"), table)
