"""Summary tables built from per-prompt results (no model needed)."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def accuracy_table(answers: pd.DataFrame, **labels: object) -> pd.DataFrame:
    """One row per operator: ``n_prompts, n_correct, accuracy`` from an answers table (``operator, correct``),
    with ``labels`` (e.g. ``model=..., revision=...``) as leading columns."""
    grouped = answers.groupby("operator", sort=False)["correct"]
    table = pd.DataFrame({"n_prompts": grouped.size(), "n_correct": grouped.sum()}).reset_index()
    table["accuracy"] = table["n_correct"] / table["n_prompts"]
    return with_labels(table, **labels)


def with_labels(frame: pd.DataFrame, **labels: object) -> pd.DataFrame:
    """``frame`` with ``labels`` (e.g. ``model=..., revision=..., operator=...``) inserted as leading columns, in
    place; returns it."""
    for i, (key, value) in enumerate(labels.items()):
        frame.insert(i, key, value)
    return frame


def concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate tables with a fresh index."""
    return pd.concat(list(frames), ignore_index=True)
