"""A table written inside a workflow job carries that job's provenance as parquet metadata, readable with pyarrow;
the bytes do not change between identical runs; performance settings are never params."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from snakemake.iocontainers import InputFiles, Log, Params, Wildcards

from circuitflow import provenance
from circuitflow.config import load_workflow_config
from circuitflow.io import write_parquet
from circuitflow.snakejob import PERFORMANCE_KEYS, job_performance, snakemake_job, without_performance

ROOT = Path(__file__).resolve().parents[2]
FRAME = pd.DataFrame({"layer": [0, 1], "ie": [0.5, 2.0e30]})


def fake_job(tmp_path: Path, params: dict, threads: int = 1, config: dict | None = None) -> SimpleNamespace:
    """What Snakemake hands a script: params, input (the model's own handle), wildcards, log, threads, config."""
    handle = tmp_path / "results/models/toy/model.json"
    handle.parent.mkdir(parents=True, exist_ok=True)
    handle.write_text(json.dumps({"name": "toy", "path": str(tmp_path), "revision": "step150", "source": "toy"}))
    return SimpleNamespace(params=Params(fromdict=params), input=InputFiles(fromdict={"handle": str(handle)}),
                           wildcards=Wildcards(fromdict={"model": "toy", "op": "add"}),
                           log=Log([str(tmp_path / "job.log")]), threads=threads, config=config or {})


def test_a_table_written_in_a_job_carries_its_provenance(tmp_path):
    params = {"loc": {"seeds": [0, 1]}, "dtype": "float32", "code": "0123456789ab", "partial": "results/.partial"}
    with snakemake_job(fake_job(tmp_path, params)):
        write_parquet(FRAME, tmp_path / "t.parquet")
    stored = json.loads(pq.read_schema(tmp_path / "t.parquet").metadata[b"circuitflow.provenance"])
    config = {"loc": {"seeds": [0, 1]}, "dtype": "float32"}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert stored["model"] == "toy" and stored["revision"] == "step150"
    assert stored["config"] == config and stored["code"] == "0123456789ab"
    assert stored["config_hash"] == hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    assert stored["git"]["commit"] == commit.strip() and isinstance(stored["git"]["dirty"], bool)
    assert stored["packages"]["torch"] == torch.__version__ and stored["packages"]["pandas"] == pd.__version__
    assert provenance.read_provenance(tmp_path / "t.parquet") == stored
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), FRAME)
    # outside a job nothing is registered: no stale record is written
    write_parquet(FRAME, tmp_path / "u.parquet")
    assert provenance.current() is None and provenance.read_provenance(tmp_path / "u.parquet") is None


def test_identical_jobs_write_identical_bytes(tmp_path):
    params = {"seed": 0, "code": "abc"}
    for name in ("a", "b"):
        with snakemake_job(fake_job(tmp_path, params)):
            write_parquet(FRAME, tmp_path / f"{name}.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    with snakemake_job(fake_job(tmp_path, {"seed": 1, "code": "abc"})):
        write_parquet(FRAME, tmp_path / "c.parquet")
    assert provenance.read_provenance(tmp_path / "c.parquet")["config_hash"] != \
        provenance.read_provenance(tmp_path / "a.parquet")["config_hash"]


def test_a_failing_job_unregisters_its_provenance(tmp_path):
    with pytest.raises(RuntimeError):
        with snakemake_job(fake_job(tmp_path, {"code": "abc"})):
            raise RuntimeError("boom")
    assert provenance.current() is None
    assert "boom" in (tmp_path / "job.log").read_text()


def test_model_jobs_set_torch_threads_from_snakemake(tmp_path):
    before = torch.get_num_threads()
    try:
        with snakemake_job(fake_job(tmp_path, {}, threads=1), torch_threads=True):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_performance_settings_come_from_the_config_and_are_not_params(tmp_path):
    config, _ = load_workflow_config(
        {"models": {"toy": {"source": "toy"}}, "device": "auto", "device_map": "auto", "batch_size": 7,
         "circuits": {"batch_size": 8}, "localization": {"batch_size": 9, "seeds": [3]}},
        ROOT / "workflow/schemas/config.schema.yaml")
    perf = job_performance(fake_job(tmp_path, {}, threads=3, config=config))
    assert (perf.device, perf.device_map, perf.batch_size, perf.circuits_batch_size, perf.localization_batch_size,
            perf.threads) == ("auto", "auto", 7, 8, 9, 3)
    kept = without_performance(config)
    assert kept["localization"]["seeds"] == [3] and kept["seed"] == config["seed"]
    removed = {f"{section}.{key}" if section else key
               for section, before in [(None, config), *((s, config[s]) for s in ("circuits", "localization"))]
               for key in before
               if key not in (kept[section] if section else kept)}
    assert removed == set(PERFORMANCE_KEYS)
