"""Model handles: where a model's Hugging Face files are, and where they came from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from circuitflow.io import write_json


@dataclass(frozen=True)
class ModelHandle:
    """A loadable model: ``path`` is a local HF directory, or a hub repo id when ``revision`` is set for the hub.

    ``provenance`` records how it was made (toy recipe and step, hub revision, LoRA adapter and scalings) and is
    copied into every output table's metadata.
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


def write_handle(handle: ModelHandle, path: Path | str) -> None:
    """Write ``handle`` as JSON, atomically."""
    write_json(asdict(handle), path)


def read_handle(path: Path | str) -> ModelHandle:
    """Read a handle written by :func:`write_handle`."""
    return ModelHandle(**json.loads(Path(path).read_text()))


def read_handles(path: Path | str) -> list[ModelHandle]:
    """Read a checkpoint index (``checkpoints.json``): a list of handles."""
    return [ModelHandle(**entry) for entry in json.loads(Path(path).read_text())]
