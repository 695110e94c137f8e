"""Model handles: where a model's Hugging Face files are, and where they came from.

Handle files are relocatable: a copied or moved project reads its own models. On disk a handle's ``path`` is

- for a hub model (``source: hub`` with ``repo_id`` and ``commit`` in its provenance): the repo id; reading finds the
  snapshot of that commit in the Hugging Face cache of this process (``HF_HOME``/``HF_HUB_CACHE``), offline;
- for any other model inside the working directory or the handle's results folder (toy checkpoints, merged LoRAs,
  local models kept in the project): relative to the handle file's folder;
- otherwise (a local model elsewhere, e.g. ``/data/models/x``: the user's own files): absolute.

:func:`read_handle` and :func:`read_handles` return handles whose ``path`` is absolute (or a bare hub repo id), ready
for the loaders; a missing, broken or stale handle file is a :class:`HandleError` naming the file and the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from circuitflow.io import write_json


@dataclass(frozen=True)
class ModelHandle:
    """A loadable model: ``path`` is a local HF directory, or a hub repo id when ``revision`` is set for the hub.

    ``provenance`` records how it was made (toy recipe and step, hub repo id and commit, LoRA adapter and scalings)
    and is copied into every output table's metadata.
    """

    name: str
    path: str
    revision: str | None = None
    source: str = "local"
    provenance: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        """The training step of a ``step{N}`` revision (Pythia, toy checkpoints), else -1."""
        revision = self.revision or ""
        return int(revision.removeprefix("step")) if revision.startswith("step") else -1


class HandleError(ValueError):
    """A handle file that cannot be used; the message is one line naming the file, what is wrong and the fix."""


FIELDS = {f.name for f in fields(ModelHandle)}


def _cached_hub(handle: ModelHandle) -> bool:
    """True for a hub handle that names its commit, so its files are found in the cache, never by a stored path."""
    return handle.source == "hub" and {"repo_id", "commit"} <= handle.provenance.keys()


def _results_folder(handle_file: Path) -> Path:
    """``{results}`` for a handle at ``{results}/models/{model}/``; the handle's own folder otherwise."""
    folder = handle_file.parent
    return folder.parent.parent if folder.parent.name == "models" else folder


def _inside(path: str, folder: Path) -> bool:
    """True when the absolute ``path`` is ``folder`` or lies below it."""
    return os.path.commonpath([path, str(folder)]) == str(folder)


def stored_handle(handle: ModelHandle, handle_file: Path | str) -> dict:
    """``handle`` as written to ``handle_file`` (see the module docstring for how ``path`` is stored)."""
    record = asdict(handle)
    if _cached_hub(handle):
        record["path"] = handle.provenance["repo_id"]
    elif handle.source != "hub":
        handle_file = Path(os.path.abspath(handle_file))
        target = os.path.abspath(handle.path)
        if any(_inside(target, root) for root in (Path.cwd(), _results_folder(handle_file))):
            record["path"] = os.path.relpath(target, handle_file.parent)
    return record


def write_handle(handle: ModelHandle, path: Path | str) -> None:
    """Write ``handle`` to ``path`` as JSON, atomically and relocatably."""
    write_json(stored_handle(handle, path), path)


def write_handles(handles: list[ModelHandle], path: Path | str) -> None:
    """Write a checkpoint index (``checkpoints.json``): a list of handles, as :func:`write_handle` does."""
    write_json([stored_handle(handle, path) for handle in handles], path)


def _fix(path: Path) -> str:
    """How to get a good copy of a handle file: rerun the job that writes it."""
    return f"rerun with: snakemake --forcerun {path}"


def _load(path: Path) -> object:
    """The JSON in ``path``, or a one-line :class:`HandleError`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HandleError(f"{path}: no such handle file: run the workflow (snakemake) to write it") from None
    except (OSError, UnicodeDecodeError) as err:
        raise HandleError(f"{path}: unreadable ({type(err).__name__}): {_fix(path)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise HandleError(f"{path}: not valid JSON (truncated?) at line {err.lineno} column {err.colno}: "
                          f"{_fix(path)}") from None


def _hub_snapshot(handle: ModelHandle, path: Path) -> str:
    """The cached snapshot folder of a hub handle's commit (offline lookup), or a one-line :class:`HandleError`."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo_id, commit = handle.provenance["repo_id"], handle.provenance["commit"]
    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=constants.HF_HUB_CACHE, revision=commit)
    if not isinstance(config, str):
        raise HandleError(f"{path}: {repo_id}@{handle.revision} (commit {commit}) is not in the Hugging Face cache "
                          f"{constants.HF_HUB_CACHE}: set HF_HOME to the cache that holds it, or {_fix(path)}")
    return str(Path(config).parent)


def _resolve(record: object, path: Path) -> ModelHandle:
    """A handle from one stored record of ``path``, its ``path`` made usable here."""
    if not isinstance(record, dict) or not {"name", "path"} <= record.keys() or record.keys() - FIELDS:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise HandleError(f"{path}: not a model handle (expected the keys {sorted(FIELDS)}, got {keys}): "
                          f"{_fix(path)}")
    if not isinstance(record["path"], str) or not isinstance(record.get("provenance", {}), dict):
        raise HandleError(f"{path}: 'path' must be a string and 'provenance' an object: {_fix(path)}")
    handle = ModelHandle(**record)
    if _cached_hub(handle):
        location = _hub_snapshot(handle, path)
    elif handle.source == "hub":
        return handle
    else:
        location = os.path.normpath(os.path.join(os.path.abspath(path.parent), handle.path))
        if not os.path.exists(location):
            raise HandleError(f"{path}: the model folder {location} does not exist: {_fix(path)}")
    return ModelHandle(**{**record, "path": location})


def read_handle(path: Path | str) -> ModelHandle:
    """Read a handle written by :func:`write_handle`; its ``path`` is usable from here (absolute, or a hub id)."""
    path = Path(path)
    return _resolve(_load(path), path)


def read_handles(path: Path | str) -> list[ModelHandle]:
    """Read a checkpoint index (``checkpoints.json``) written by :func:`write_handles`."""
    path = Path(path)
    records = _load(path)
    if not isinstance(records, list):
        raise HandleError(f"{path}: not a list of model handles (got a {type(records).__name__}): {_fix(path)}")
    return [_resolve(record, path) for record in records]
