"""Reading the workflow's tables with errors that name the file, and summary tables built from per-prompt results
(no model needed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

# what every consumer of a prompt set (results/{model}/prompts/{op}.parquet) reads
PROMPT_SET_COLUMNS = ("prompt", "corrupt_prompt", "answer_token", "corrupt_answer_token")


class TableError(ValueError):
    """A table file that cannot be used; the message is one line naming the file, what is wrong and the fix."""


def read_table(path: Path | str, columns: Sequence[str] = ()) -> pd.DataFrame:
    """The parquet table at ``path``, which must hold ``columns``; a file that is unreadable (truncated, not parquet)
    or lacks a column raises :class:`TableError` naming it."""
    fix = "delete it and rerun: Snakemake makes it again"
    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise TableError(f"{path}: no such table; run the workflow to make it") from None
    except Exception as err:  # pyarrow raises several unrelated types for a damaged file
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TableError(f"{path}: not a readable parquet table ({detail}); {fix}") from None
    missing = [c for c in columns if c not in frame]
    if missing:
        raise TableError(f"{path}: no column {', '.join(map(repr, missing))} (written by another version of "
                         f"circuitflow, or edited); {fix}")
    return frame


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
