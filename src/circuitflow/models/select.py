"""Picking the base revision of a LoRA model from its base's handles."""

from __future__ import annotations

from pathlib import Path

from circuitflow.models.handle import ModelHandle, read_handle, read_handles
from circuitflow.models.registry import ModelSpec


def base_handle(spec: ModelSpec, handle_file: Path | str, checkpoints_file: Path | str) -> ModelHandle:
    """The handle of ``spec.base`` at ``spec.base_revision`` (the base's final model when unset)."""
    final = read_handle(handle_file)
    if spec.base_revision is None or spec.base_revision == final.revision:
        return final
    for handle in read_handles(checkpoints_file):
        if handle.revision == spec.base_revision:
            return handle
    raise ValueError(f"models.{spec.name}.base_revision: {spec.base_revision!r} is not a checkpoint of {spec.base}")
