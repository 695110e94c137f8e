"""Results are relocatable: a finished tiny run (the session's ``tiny_workdir``) copied elsewhere (mtimes kept), with
its original moved away, is up to date in its new place, and a rerun there of a job that loads the model finds the
copy's own files; no text file of the results names the original folder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from circuitflow.models import read_handle, read_handles
from circuitflow.provenance import read_provenance
from tests.integration.conftest import TINY, copy_run
from tests.integration.test_reruns import rules_in, snakemake, write_config

pytestmark = pytest.mark.workflow

# one operator's attention table (needs the toy, the prompts, the IE maps and the attention scores) and a LoRA
# fine-tuned and merged on a toy checkpoint
TARGETS = ("results/toy/attention/add.parquet", "results/models/toy-lora/model.json")


@contextmanager
def moved_away(folder: Path) -> Iterator[None]:
    """``folder`` renamed (so nothing can read it at its path) until the block ends, then put back: the shared run
    stays for the tests after this one."""
    away = folder.with_name(folder.name + ".away")
    folder.rename(away)
    try:
        yield
    finally:
        away.rename(folder)


def test_a_copied_run_is_up_to_date_and_reruns_with_its_own_files(tiny_workdir, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    recipe = config["models"]["toy"]["recipe"]
    copy = copy_run(tiny_workdir, tmp_path / "B")
    with moved_away(tiny_workdir):
        dry = snakemake(copy, TINY, "-n", *TARGETS)
        assert rules_in(dry) == set() and "Nothing to be done" in dry.stdout + dry.stderr
        changed = write_config(copy, "changed", config, localization__attention_heads=1)
        assert rules_in(snakemake(copy, changed, *TARGETS)) == {"attention"}

    models = copy / "results/models/toy"
    final = f"checkpoints/step{recipe['steps']}"
    assert json.loads((models / "model.json").read_text())["path"] == final
    assert read_handle(models / "model.json").path == str(models / final)
    assert {h.path for h in read_handles(models / "checkpoints.json")} == {
        str(models / f"checkpoints/step{s}") for s in {*recipe["checkpoint_steps"], recipe["steps"]}}
    lora, base = copy / "results/models/toy-lora", config["models"]["toy-lora"]["base_revision"]
    assert read_handle(lora / "model.json").path == str(lora / "merged")
    assert json.loads((lora / "model.json").read_text())["provenance"]["base"]["path"] == f"../toy/checkpoints/{base}"
    adapter = json.loads((lora / "adapter/adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == f"results/models/toy/checkpoints/{base}"
    assert adapter["target_modules"] == sorted(adapter["target_modules"])
    both = os.path.commonpath([tiny_workdir, copy])  # names neither the original nor the copy
    texts = [p for p in (copy / "results").rglob("*") if p.suffix in {".json", ".yaml", ".yml", ".md"}]
    assert len(texts) >= 20
    for path in texts:
        assert both not in path.read_text(), path
    tables = list((copy / "results").rglob("*.parquet"))
    assert read_provenance(copy / "results/toy/attention/add.parquet")["config"]["loc"] == {"attention_heads": 1}
    for path in tables:
        assert both not in json.dumps(read_provenance(path)), path
