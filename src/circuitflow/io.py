"""Atomic writes: an interrupted job never leaves a half-written output that looks finished. Tables carry the
provenance of the job that wrote them (:mod:`circuitflow.provenance`). Long sweeps resume from checksummed units,
and a lock left by a killed Snakemake run is released when no run is alive (:func:`release_stale_lock`)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pandas as pd

from circuitflow.provenance import PROVENANCE_KEY, current, encode

log = logging.getLogger(__name__)


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
    modes on it and everything in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        for folder, _, files in os.walk(tmp):  # writers such as safetensors create private (0600) files
            os.chmod(folder, umask_mode(directory=True))
            for name in files:
                os.chmod(os.path.join(folder, name), umask_mode(directory=False))
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
    other settings or inputs never reuses them. Once the block succeeds ``base`` is removed, and so is its parent
    when that is a hidden folder (``.partial``) left empty: a completed sweep leaves nothing behind."""
    base = Path(base)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = base / digest
    for _ in range(3):  # a sibling sweep finishing meanwhile may remove the emptied parent while it is made
        try:
            folder.mkdir(parents=True, exist_ok=True)
            break
        except FileNotFoundError:
            continue
    yield folder
    shutil.rmtree(base, ignore_errors=True)
    if base.parent.name.startswith("."):
        with suppress(OSError):  # still holds another job's sweep, or already gone
            base.parent.rmdir()


def checksum_path(path: Path) -> Path:
    """The sidecar holding the sha256 of a sweep unit's bytes, written after the unit."""
    return path.with_name(path.name + ".sha256")


def read_unit(path: Path) -> pd.DataFrame | None:
    """The finished unit at ``path``, or None when there is none or it is not to be trusted (no checksum, bytes that
    do not match it, or a file parquet cannot read): then a warning says why and the unit is computed again."""
    if not path.exists():
        return None
    sidecar = checksum_path(path)
    data = path.read_bytes()
    if not sidecar.exists():
        why = "it has no checksum (interrupted while writing it?)"
    elif hashlib.sha256(data).hexdigest() != sidecar.read_text().strip():
        why = "its bytes do not match its checksum (truncated or changed since it was written)"
    else:
        try:
            return pd.read_parquet(io.BytesIO(data))
        except Exception as err:  # noqa: BLE001 — any unreadable unit is recomputed, whatever pyarrow says
            why = f"it cannot be read ({type(err).__name__}: {err})"
    log.warning("sweep unit %s: %s; computing it again", path, why)
    return None


def cached_frame(path: Path | str, compute) -> pd.DataFrame:
    """A finished unit of a long sweep: read ``path`` if an earlier (maybe interrupted) run wrote it and it matches
    its checksum, else call ``compute()``, write its frame and then its checksum atomically, and return it. Lets a
    rerun resume where the last one stopped, and never trust a unit that was cut short or changed."""
    path = Path(path)
    frame = read_unit(path)
    if frame is not None:
        return frame
    frame = compute()
    write_parquet(frame, path)
    with atomic_path(checksum_path(path)) as tmp:
        tmp.write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    return frame


def process_table() -> list[tuple[int, int, str, Path | None]]:
    """``(pid, parent pid, command line, working directory or None when unknown)`` of every process: from /proc on
    Linux (the directory is None where it is another user's), else from ``ps`` (directories unknown)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,args="], capture_output=True, text=True).stdout
        return [(int(pid), int(ppid), args, None) for pid, ppid, args in
                ((line.split(None, 2) + [""])[:3] for line in out.splitlines() if line.strip())]
    rows = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                cwd = None
            rows.append((int(entry.name), ppid, args, cwd))
    return rows


def snakemake_runs_on(workdir: Path | str) -> list[int]:
    """Ids of the processes, other than this one and its ancestors, that may be a Snakemake run (or one of its jobs)
    on ``workdir``: the command line names snakemake and the working directory is ``workdir`` or unknown."""
    workdir = Path(workdir).resolve()
    table = process_table()
    parents = {pid: ppid for pid, ppid, _, _ in table}
    mine, pid = set(), os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        pid = parents.get(pid, 0)
    return [pid for pid, _, args, cwd in table
            if pid not in mine and "snakemake" in args and (cwd is None or cwd == workdir)]


def release_stale_lock(workdir: Path | str = ".") -> bool:
    """Remove the lock a killed Snakemake run left in ``workdir/.snakemake/locks`` (what ``snakemake --unlock``
    removes) when no Snakemake process runs on ``workdir``; say so in one line. A lock held by a live run stays, so
    Snakemake still refuses a second run on the same files. True when a lock was removed."""
    locks = Path(workdir) / ".snakemake" / "locks"
    if not any(locks.glob("*.lock")):
        return False
    running = snakemake_runs_on(workdir)
    if running:
        print(f"{locks}: kept (snakemake processes {running[:5]} may be running on this folder)", file=sys.stderr)
        return False
    shutil.rmtree(locks)
    print(f"{locks}: removed the lock of an interrupted run (no snakemake process runs on this folder)",
          file=sys.stderr)
    return True
