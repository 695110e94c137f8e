"""Results are relocatable: a finished tiny run copied elsewhere (mtimes kept) with its original deleted is up to date
in its new place, and a rerun there of a job that loads the model finds the copy's own files; no text file of the
results names the original folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from circuitflow.models import read_handle, read_handles
from circuitflow.provenance import read_provenance
from tests.integration.test_reruns import ROOT, base_config, rules_in, snakemake, write_config

pytestmark = pytest.mark.workflow

# one operator's attention table (trains the toy, makes the prompts, the IE maps and the attention scores) and a
# LoRA fine-tuned and merged on a toy checkpoint
TARGETS = ("results/toy/attention/add.parquet", "results/models/toy-lora/model.json")
MODELS = {**base_config()["models"], "toy-lora": yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())[
    "models"]["toy-lora"]}


def test_a_copied_run_is_up_to_date_and_reruns_with_its_own_files(tmp_path):
    original, copy = tmp_path / "A", tmp_path / "B"
    original.mkdir()
    run = snakemake(original, write_config(original, "base", models=MODELS), *TARGETS)
    assert run.returncode == 0, run.stderr[-4000:]
    shutil.copytree(original, copy, symlinks=True, copy_function=shutil.copy2)
    shutil.rmtree(original)

    dry = snakemake(copy, copy / "base.yaml", "-n", *TARGETS)
    assert rules_in(dry) == set() and "Nothing to be done" in dry.stdout + dry.stderr
    changed = write_config(copy, "changed", models=MODELS, localization__attention_heads=1)
    assert rules_in(snakemake(copy, changed, *TARGETS)) == {"attention"}

    models = copy / "results/models/toy"
    assert json.loads((models / "model.json").read_text())["path"] == "checkpoints/step600"
    assert read_handle(models / "model.json").path == str(models / "checkpoints/step600")
    assert {h.path for h in read_handles(models / "checkpoints.json")} == {
        str(models / f"checkpoints/step{s}") for s in (0, 300, 600)}
    lora = copy / "results/models/toy-lora"
    assert read_handle(lora / "model.json").path == str(lora / "merged")
    assert json.loads((lora / "model.json").read_text())["provenance"]["base"]["path"] == "../toy/checkpoints/step300"
    adapter = json.loads((lora / "adapter/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "results/models/toy/checkpoints/step300"
    assert adapter["target_modules"] == sorted(adapter["target_modules"])
    texts = [p for p in (copy / "results").rglob("*") if p.suffix in {".json", ".yaml", ".yml", ".md"}]
    assert len(texts) >= 20
    for path in texts:
        assert str(tmp_path) not in path.read_text(), path
    tables = list((copy / "results").rglob("*.parquet"))
    assert read_provenance(copy / "results/toy/attention/add.parquet")["config"]["loc"] == {"attention_heads": 1}
    for path in tables:
        assert str(tmp_path) not in json.dumps(read_provenance(path)), path
