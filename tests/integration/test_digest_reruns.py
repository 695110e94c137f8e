"""Weights are inputs: on a finished run of a `local` model (a tiny trained toy saved elsewhere), an untouched model
plans nothing, weights changed in place rerun the digest and its dependents, and a broken weight file stops at the
digest in one line, before any dependent job can lose its outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from tests.integration.test_reruns import base_config, rules_in, snakemake

pytestmark = pytest.mark.workflow
TARGET = "results/mine/accuracy.parquet"


@pytest.fixture(scope="module")
def run(tmp_path_factory, toy_dir) -> tuple[Path, Path, Path]:
    """(work folder, config file, the local model's folder) after a run of TARGET."""
    folder = tmp_path_factory.mktemp("digest_reruns")
    model = folder / "mine"
    shutil.copytree(toy_dir / "checkpoints" / "step150", model)
    config = base_config()
    config["models"] = {"mine": {"source": "local", "path": str(model)}}
    config["circuits"]["models"] = config["localization"]["models"] = config["features"]["models"] = ["mine"]
    config["prompts"].update(operand_max=12, k=2)
    configfile = folder / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    done = snakemake(folder, configfile, TARGET)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, configfile, model


def digest(folder: Path) -> dict:
    return json.loads((folder / "results/models/mine/digest.json").read_text())


def test_an_untouched_model_plans_nothing(run):
    folder, configfile, _ = run
    planned = snakemake(folder, configfile, TARGET, "-n")
    assert rules_in(planned) == set() and "Nothing to be done" in planned.stdout + planned.stderr


def test_weights_changed_in_place_rerun_the_digest_and_its_dependents(run):
    folder, configfile, model = run
    before = digest(folder)["revisions"]["main"]
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if k.endswith("layernorm.bias"))
    tensors[name] += 1e-4
    save_file(tensors, weights, metadata={"format": "pt"})
    assert rules_in(snakemake(folder, configfile, TARGET, "-n")) == {"model_digest", "prompts", "accuracy"}
    assert rules_in(snakemake(folder, configfile, TARGET)) == {"model_digest", "prompts", "accuracy"}
    after = digest(folder)["revisions"]["main"]
    assert {f for f in after if after[f] != before[f]} == {"model.safetensors"}
    again = snakemake(folder, configfile, TARGET, "-n")
    assert rules_in(again) == set() and "Nothing to be done" in again.stdout + again.stderr


def test_a_truncated_weight_file_stops_at_the_digest_in_one_line(run):
    folder, configfile, model = run
    weights = model / "model.safetensors"
    outputs = [folder / "results/mine/answers/add.parquet", folder / TARGET]
    stamps = [p.stat().st_mtime_ns for p in outputs]
    weights.write_bytes(weights.read_bytes()[:-64])
    done = snakemake(folder, configfile, TARGET)
    text = done.stdout + done.stderr
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert done.returncode != 0 and "Traceback" not in text
    assert len(errors) == 1 and errors[0].startswith(f"error: {weights}: truncated safetensors file: tensor "), text
    assert [p.stat().st_mtime_ns for p in outputs] == stamps  # no dependent started, so none lost its outputs
