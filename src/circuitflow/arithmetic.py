"""Arithmetic task definition: operators, legal operand pairs and prompt strings.

A prompt is ``"{x}{op}{y}="`` with no spaces (e.g. ``"12+7="``); its answer is the integer result. An operand pair is
*legal* for an operator when its answer lies in ``0..answer_max`` (so the answer can be one token): ``+`` needs
``x + y <= answer_max``, ``-`` needs ``x >= y``, ``*`` needs ``x * y <= answer_max`` and ``/`` needs ``y >= 1``
(floor division; ``division="exact"`` additionally requires ``y`` to divide ``x``, as real language models are
asked only exact quotients).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Operator = Literal["add", "sub", "mul", "div"]
Division = Literal["floor", "exact"]

OPERATORS: tuple[Operator, ...] = ("add", "sub", "mul", "div")
SYMBOLS: dict[str, str] = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def check_operator(op: str) -> Operator:
    """Return ``op`` if it names an operator, else raise a ValueError listing the valid names."""
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {op!r}: use one of {', '.join(OPERATORS)}")
    return op  # type: ignore[return-value]


def answers(op: Operator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Integer results of ``x op y`` (floor division for ``div``; ``y`` must be >= 1 there)."""
    if op == "add":
        return x + y
    if op == "sub":
        return x - y
    if op == "mul":
        return x * y
    if op == "div":
        return x // y
    raise ValueError(f"unknown operator {op!r}")


def legal_pairs(
    op: Operator, operand_max: int, answer_max: int, division: Division = "floor"
) -> np.ndarray:
    """All legal ``(x, y)`` pairs with operands in ``0..operand_max``, as an int64 array of shape [n_pairs, 2].

    Pairs are in row-major order (x, then y), so the result is deterministic.
    """
    grid = np.arange(operand_max + 1, dtype=np.int64)
    x, y = (a.ravel() for a in np.meshgrid(grid, grid, indexing="ij"))
    keep = np.ones_like(x, dtype=bool)
    if op == "sub":
        keep &= x >= y
    if op == "div":
        keep &= y >= 1
        if division == "exact":
            keep &= x % np.maximum(y, 1) == 0
    r = answers(op, x, np.maximum(y, 1) if op == "div" else y)
    keep &= (r >= 0) & (r <= answer_max)
    return np.stack([x[keep], y[keep]], axis=1)


def prompt_text(op: Operator, x: int, y: int) -> str:
    """The prompt string for one pair, e.g. ``prompt_text("add", 12, 7) == "12+7="``."""
    return f"{x}{SYMBOLS[op]}{y}="
