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

    from circuitflow.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        write_json({"a": 1}, tmp_path / "t.json")
        with atomic_dir(tmp_path / "d") as folder:
            (folder / "f").write_text("x")
        os.umask(0o077)
        write_json({"a": 1}, tmp_path / "private.json")
    finally:
        os.umask(old)
    assert (tmp_path / "t.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
