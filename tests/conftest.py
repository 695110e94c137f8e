"""Shared fixtures: tiny models built and saved locally (no downloads), and a tiny trained toy model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuitflow.models import ModelHandle
from circuitflow.recipes import ToyRecipe

TINY_RECIPE = ToyRecipe(max_number=12, n_layers=2, d_model=32, n_heads=4, d_mlp=64, steps=150, lr=1e-2,
                        checkpoint_steps=(0, 150), seed=0)


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """A toy model trained for 150 steps (seconds): ``<dir>/step0`` and ``<dir>/step150`` checkpoints."""
    from circuitflow.toy import train_toy

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("toy")
    train_toy(TINY_RECIPE, out / "checkpoints", out / "log.parquet")
    return out


@pytest.fixture(scope="session")
def toy_handle(toy_dir) -> ModelHandle:
    return ModelHandle("toy", str(toy_dir / "checkpoints" / "step150"), "step150", "toy")
