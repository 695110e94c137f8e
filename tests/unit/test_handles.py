"""Handle files are relocatable (relative paths, hub models by commit in the HF cache) and a broken one is one line
naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from circuitflow.models.handle import HandleError, ModelHandle, read_handle, read_handles, stored_handle, \
    write_handle, write_handles

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A working directory with a toy model's checkpoints in ``results/models/toy/checkpoints``."""
    root = tmp_path / "A"
    for step in (0, 3):
        (root / f"results/models/toy/checkpoints/step{step}").mkdir(parents=True)
    monkeypatch.chdir(root)
    return root


def toy_handles(folder: Path) -> list[ModelHandle]:
    return [ModelHandle("toy", str(folder / f"checkpoints/step{s}"), f"step{s}", "toy", {"step": s}) for s in (0, 3)]


def test_results_paths_are_stored_relative_and_follow_a_moved_project(project, tmp_path, monkeypatch):
    folder = project / "results/models/toy"
    handles = toy_handles(folder)
    write_handles(handles, folder / "checkpoints.json")
    write_handle(handles[-1], folder / "model.json")
    assert json.loads((folder / "model.json").read_text())["path"] == "checkpoints/step3"
    assert [h["path"] for h in json.loads((folder / "checkpoints.json").read_text())] == ["checkpoints/step0",
                                                                                           "checkpoints/step3"]
    assert read_handle(folder / "model.json") == handles[-1]
    assert read_handles(folder / "checkpoints.json") == handles

    moved = tmp_path / "elsewhere/B"
    monkeypatch.chdir(tmp_path)
    shutil.move(project, moved)
    monkeypatch.chdir(moved)
    assert read_handle("results/models/toy/model.json").path == str(moved / "results/models/toy/checkpoints/step3")
    assert read_handles(moved / "results/models/toy/checkpoints.json") == toy_handles(moved / "results/models/toy")


def test_paths_inside_the_project_are_relative_and_outside_absolute(project, tmp_path):
    handle_file = project / "results/models/m/model.json"
    sibling = ModelHandle("toy", str(project / "results/models/toy/checkpoints/step3"), "step3", "toy")
    in_project = ModelHandle("m", "mine/m", None, "local")  # relative to the working directory, as in a config
    outside = ModelHandle("m", str(tmp_path / "data/m"), None, "local")
    assert stored_handle(sibling, handle_file)["path"] == "../toy/checkpoints/step3"
    assert stored_handle(in_project, handle_file)["path"] == "../../../mine/m"
    assert stored_handle(outside, handle_file)["path"] == str(tmp_path / "data/m")
    # a results folder outside the working directory keeps its own files relative
    results = tmp_path / "scratch/results"
    assert stored_handle(ModelHandle("toy", str(results / "models/toy/merged")),
                         results / "models/toy/model.json")["path"] == "merged"
    (tmp_path / "data/m").mkdir(parents=True)
    write_handle(outside, handle_file)
    assert read_handle(handle_file) == outside


def fake_hub_cache(hf_home: Path) -> Path:
    """What ``snapshot_download`` leaves in ``HF_HOME`` for one commit of ``org/tiny``: refs and a snapshot."""
    repo = hf_home / "hub/models--org--tiny"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs/step3").write_text(COMMIT)
    return snapshot


def test_a_hub_handle_names_its_commit_and_finds_the_cache_after_hf_home_moves(project, tmp_path):
    snapshot = fake_hub_cache(tmp_path / "hf")
    handle = ModelHandle("tiny", str(snapshot), "step3", "hub", {"repo_id": "org/tiny", "commit": COMMIT})
    handle_file = project / "results/models/tiny/model.json"
    write_handle(handle, handle_file)
    stored = json.loads(handle_file.read_text())
    assert stored["path"] == "org/tiny" and stored["provenance"]["commit"] == COMMIT
    assert str(tmp_path) not in handle_file.read_text()

    shutil.move(tmp_path / "hf", tmp_path / "moved-hf")
    code = "import sys; from circuitflow.models.handle import read_handle; print(read_handle(sys.argv[1]).path)"
    env = {**os.environ, "HF_HOME": str(tmp_path / "moved-hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    run = subprocess.run([sys.executable, "-c", code, str(handle_file)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str(tmp_path / "moved-hf/hub/models--org--tiny/snapshots" / COMMIT)


def test_a_hub_commit_missing_from_the_cache_is_one_line(project, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    handle_file = project / "results/models/tiny/model.json"
    write_handle(ModelHandle("tiny", "x", "step3", "hub", {"repo_id": "org/tiny", "commit": COMMIT}), handle_file)
    with pytest.raises(HandleError) as err:
        read_handle(handle_file)
    message = str(err.value)
    assert message.startswith(f"{handle_file}: org/tiny@step3 (commit {COMMIT}) is not in the Hugging Face cache")
    assert "HF_HOME" in message and "\n" not in message


def test_a_hub_handle_without_a_commit_is_a_repo_id(project):
    handle = ModelHandle("p", "EleutherAI/pythia-14m", "step1000", "hub", {"repo_id": "EleutherAI/pythia-14m"})
    write_handle(handle, project / "model.json")
    assert read_handle(project / "model.json") == handle


def test_an_old_absolute_handle_still_reads(project):
    target = str(project / "results/models/toy/checkpoints/step3")
    (project / "old.json").write_text(json.dumps({"name": "toy", "path": target, "revision": "step3",
                                                  "source": "toy", "provenance": {}}))
    assert read_handle(project / "old.json").path == target


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("model.json", '{"name": "toy", "path": "checkp', "not valid JSON (truncated?) at line 1 column"),
    ("checkpoints.json", "", "not valid JSON (truncated?) at line 1 column 1"),
    ("model.json", "[]", "not a model handle"),
    ("model.json", '{"name": "toy"}', "not a model handle"),
    ("model.json", '{"name": "toy", "path": "x", "colour": 1}', "not a model handle"),
    ("model.json", '{"name": "toy", "path": 3}', "'path' must be a string"),
    ("checkpoints.json", '{"name": "toy", "path": "x"}', "not a list of model handles"),
    ("checkpoints.json", '[{"name": "toy", "path": "checkpoints/step9", "source": "toy"}]',
     "checkpoints/step9 does not exist"),
])
def test_a_broken_handle_file_is_one_line_naming_it(project, name, text, expected):
    path = project / "results/models/toy" / name
    path.write_text(text)
    reader = read_handles if name == "checkpoints.json" else read_handle
    with pytest.raises(HandleError) as err:
        reader(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert message.endswith(f"rerun with: snakemake --forcerun {path}") and "\n" not in message


def test_a_missing_handle_file_says_to_run_the_workflow(project):
    with pytest.raises(HandleError, match=r"results/models/toy/model.json: no such handle file: run the workflow"):
        read_handle("results/models/toy/model.json")
