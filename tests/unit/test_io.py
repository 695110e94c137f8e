"""Atomic outputs and resumable sweeps: an interrupted sweep resumes, a changed one starts over, a finished one
leaves nothing behind."""

from __future__ import annotations

import pandas as pd
import pytest

from circuitflow.io import cached_frame, file_stamps, resumable_sweep, write_parquet


def test_resumable_sweep_resumes_only_with_the_same_key_and_cleans_up(tmp_path):
    base, calls = tmp_path / ".partial", []

    def unit(value):
        calls.append(value)
        return pd.DataFrame({"value": [value]})

    with pytest.raises(KeyboardInterrupt):  # interrupted after the first unit
        with resumable_sweep(base, {"seed": 0}) as folder:
            cached_frame(folder / "a.parquet", lambda: unit(1))
            raise KeyboardInterrupt
    with resumable_sweep(base, {"seed": 0}) as folder:  # same settings: the finished unit is reused
        assert cached_frame(folder / "a.parquet", lambda: unit(2))["value"].tolist() == [1]
    assert calls == [1] and not base.exists()  # completed: nothing left behind
    with pytest.raises(KeyboardInterrupt):
        with resumable_sweep(base, {"seed": 0}) as folder:
            cached_frame(folder / "a.parquet", lambda: unit(3))
            raise KeyboardInterrupt
    with resumable_sweep(base, {"seed": 1}) as folder:  # other settings: computed again
        assert cached_frame(folder / "a.parquet", lambda: unit(4))["value"].tolist() == [4]


def test_file_stamps_change_when_an_input_is_rewritten(tmp_path):
    path = tmp_path / "t.parquet"
    write_parquet(pd.DataFrame({"x": [1]}), path)
    before = file_stamps([path])
    write_parquet(pd.DataFrame({"x": [1, 2]}), path)
    assert file_stamps([path]) != before and file_stamps([path])[0][0] == str(path)


def test_write_parquet_stores_provenance_and_keeps_pandas_attrs(tmp_path):
    from circuitflow.provenance import read_provenance

    frame = pd.DataFrame({"x": [1.5, 2.5]})
    frame.attrs["prompt_config"] = {"k": 5}
    record = {"model": "toy", "revision": "step1", "config_hash": "abc"}
    write_parquet(frame, tmp_path / "t.parquet", provenance=record)
    write_parquet(frame, tmp_path / "u.parquet", provenance=dict(reversed(record.items())))
    assert read_provenance(tmp_path / "t.parquet") == record
    assert pd.read_parquet(tmp_path / "t.parquet").attrs == {"prompt_config": {"k": 5}}
    assert (tmp_path / "t.parquet").read_bytes() == (tmp_path / "u.parquet").read_bytes()  # canonical JSON


def test_atomic_outputs_get_the_umask_modes_not_private_ones(tmp_path):
    import os

    import torch
    from safetensors.torch import save_file

    from circuitflow.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        write_json({"a": 1}, tmp_path / "t.json")
        with atomic_dir(tmp_path / "d") as folder:
            (folder / "f").write_text("x")
            save_file({"w": torch.zeros(2)}, str(folder / "w.safetensors"))  # safetensors writes 0600 files
        os.umask(0o077)
        write_json({"a": 1}, tmp_path / "private.json")
    finally:
        os.umask(old)
    assert (tmp_path / "t.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d/w.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


def finished_unit(tmp_path, value=1):
    """A sweep under ``tmp_path/results/.partial/job`` interrupted after its one unit; returns (base, unit path)."""
    base = tmp_path / "results" / ".partial" / "job"
    with pytest.raises(KeyboardInterrupt):
        with resumable_sweep(base, {"seed": 0}) as folder:
            cached_frame(folder / "a.parquet", lambda: pd.DataFrame({"value": [value]}))
            raise KeyboardInterrupt
    return base, folder / "a.parquet"


@pytest.mark.parametrize("damage", ["truncate", "tamper", "no checksum"])
def test_a_damaged_unit_is_computed_again_with_a_warning(tmp_path, caplog, damage):
    base, unit = finished_unit(tmp_path)
    if damage == "truncate":
        unit.write_bytes(unit.read_bytes()[:40])
    elif damage == "tamper":  # a valid table with other values
        pd.DataFrame({"value": [99]}).to_parquet(unit)
    else:
        unit.with_name("a.parquet.sha256").unlink()
    with resumable_sweep(base, {"seed": 0}) as folder:
        assert cached_frame(folder / "a.parquet", lambda: pd.DataFrame({"value": [2]}))["value"].tolist() == [2]
    assert any("a.parquet" in r.message and "computing it again" in r.message and r.levelname == "WARNING"
               for r in caplog.records)


def test_an_intact_unit_is_reused_silently_and_success_leaves_no_partial(tmp_path, caplog):
    base, _ = finished_unit(tmp_path)
    with resumable_sweep(base, {"seed": 0}) as folder:
        assert cached_frame(folder / "a.parquet", lambda: pd.DataFrame({"value": [2]}))["value"].tolist() == [1]
    assert not caplog.records
    assert list((tmp_path / "results").iterdir()) == []  # no empty .partial/ left


def test_success_keeps_a_partial_folder_that_holds_another_sweep(tmp_path):
    other = tmp_path / "results" / ".partial" / "other"
    other.mkdir(parents=True)
    base, _ = finished_unit(tmp_path)
    with resumable_sweep(base, {"seed": 0}):
        pass
    assert not base.exists() and other.exists()


def test_a_stale_lock_is_released_only_when_no_snakemake_runs_on_the_folder(tmp_path, monkeypatch):
    import circuitflow.io as cio

    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("results/x.parquet\n")
    alive = [(4242, 1, "python -m snakemake --cores 2", tmp_path.resolve())]
    monkeypatch.setattr(cio, "process_table", lambda: alive)
    assert not cio.release_stale_lock(tmp_path) and (locks / "0.input.lock").exists()
    alive[0] = (4242, 1, "python -m snakemake --cores 2", tmp_path.resolve() / "elsewhere")  # another folder
    assert cio.release_stale_lock(tmp_path) and not locks.exists()
    assert not cio.release_stale_lock(tmp_path)  # nothing to release


def test_processes_with_an_unknown_folder_count_as_running_here(tmp_path, monkeypatch):
    import circuitflow.io as cio

    monkeypatch.setattr(cio, "process_table", lambda: [(4242, 1, "snakemake --cores 2", None),
                                                        (4243, 1, "vim notes.txt", tmp_path.resolve())])
    assert cio.snakemake_runs_on(tmp_path) == [4242]
