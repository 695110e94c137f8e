"""Atomic writes: an interrupted job never leaves a half-written output that looks finished. Tables carry the
provenance of the job that wrote them (:mod:`circuitflow.provenance`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from circuitflow.provenance import PROVENANCE_KEY, current, encode


def umask_mode(directory: bool) -> int:
    """The mode a plain ``open``/``mkdir`` would give under the process's umask (``mkstemp``/``mkdtemp`` give
    0600/0700, which would keep results private to their owner on a shared lab or cluster folder)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it onto ``path`` only if the block succeeds. The file
    gets the umask's mode, like any other new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode(directory=False))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds, with the umask's
    mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        os.chmod(tmp, umask_mode(directory=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_parquet(frame: pd.DataFrame, path: Path | str, provenance: dict | None = None) -> None:
    """Write ``frame`` to parquet atomically (no index). ``provenance`` (default: the current job's record, if one
    is registered) is stored as the key-value metadata ``circuitflow.provenance``; ``frame.attrs`` as pandas does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    record = provenance if provenance is not None else current()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    extra = {}
    if frame.attrs:
        extra[b"PANDAS_ATTRS"] = json.dumps(frame.attrs).encode()
    if record is not None:
        extra[PROVENANCE_KEY.encode()] = encode(record)
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **extra}), tmp)


def write_json(obj: object, path: Path | str) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_stamps(paths) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of each file: what a sweep's inputs looked like."""
    return [(str(path), os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in paths]


@contextmanager
def resumable_sweep(base: Path | str, key: object) -> Iterator[Path]:
    """The folder for the finished units of a long sweep (see :func:`cached_frame`), named by a hash of ``key`` —
    everything the units depend on (settings, code version, :func:`file_stamps` of the inputs) — so a rerun with
    other settings or inputs never reuses them. Once the block succeeds ``base`` is removed: a completed sweep
    leaves nothing behind."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    yield Path(base) / digest
    shutil.rmtree(base, ignore_errors=True)


def cached_frame(path: Path | str, compute) -> pd.DataFrame:
    """A finished unit of a long sweep: read ``path`` if an earlier (maybe interrupted) run wrote it, else call
    ``compute()``, write its frame atomically and return it. Lets a rerun resume where the last one stopped."""
    path = Path(path)
    if path.exists():
        return pd.read_parquet(path)
    frame = compute()
    write_parquet(frame, path)
    return frame
