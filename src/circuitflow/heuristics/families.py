"""The heuristics a neuron can implement, each as the set of prompts it is *associated* with.

An arithmetic heuristic (Nikankin et al. 2025, §4) is a simple rule on the operands or on the result of a prompt
``x op y=``: "op1 is in [20, 30)", "both operands are odd", "op1 == op2", "the result is 7 mod 9", "the result is
40"... A heuristic is represented here by a boolean mask over the analysed prompts (the operand grid): the prompts it
applies to. Families:

operand heuristics (matched against the neuron's activation):
  ``op1_range`` / ``op2_range`` / ``both_range``    [a, a + w): ranges of every width w in ``range_sizes``
                                                     inside 0..max, starting every w/2 (half-overlapping)
  ``op1_mod`` / ``op2_mod`` / ``both_mod``          x ≡ m (mod n) for n in ``moduli``, m = 0..n−1
  ``op1_pattern`` / ``op2_pattern``                 digit patterns of the zero-padded number, e.g. ``.3.`` (tens
                                                     digit 3) or ``1.5``; prefix patterns are ranges and a fixed
                                                     last digit alone is mod 10, so those are not repeated
  ``op1_value`` / ``op2_value``                     the operand is v
  ``same_operand``                                  op1 == op2
result heuristics (matched against activation × the logit the neuron's value vector writes to the true result):
  ``result_range``, ``result_mod``, ``result_pattern`` as above, on the result
  ``result_value``                                  the result is v
  ``result_set``                                    the result is one of a neuron's m favourite values (found per
                                                     neuron; see :mod:`circuitflow.heuristics.matching`)

Heuristics that apply to fewer than ``min_prompts`` prompts or to more than ``max_coverage`` of them are dropped: a
neuron matches a heuristic of one or two prompts, or one that covers most prompts, by chance (the original code
special-cased such heuristics per operator, e.g. "result = 0" for division; these two limits handle them all the
same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

OPERAND_FAMILIES = ("op1_range", "op2_range", "both_range", "op1_mod", "op2_mod", "both_mod", "op1_pattern",
                    "op2_pattern", "op1_value", "op2_value", "same_operand")
RESULT_FAMILIES = ("result_range", "result_mod", "result_pattern", "result_value", "result_set")


@dataclass(frozen=True)
class HeuristicSpec:
    """Which heuristics to test (the defaults follow the paper; ranges adapt to the operand range)."""

    range_sizes: tuple[int, ...] = (10, 20, 50)
    moduli: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10)
    value_set_sizes: tuple[int, ...] = (2, 3, 4, 5)
    max_coverage: float = 0.3
    min_prompts: int = 5

    @classmethod
    def from_config(cls, section: dict) -> HeuristicSpec:
        """The spec of the workflow config's ``heuristics`` section."""
        return cls(tuple(section["range_sizes"]), tuple(section["moduli"]), tuple(section["value_set_sizes"]),
                   section["max_coverage"], section["min_prompts"])


@dataclass
class HeuristicSet:
    """Named heuristics over P prompts: ``masks`` ``[H, P]`` (bool), with each one's ``family``, ``kind``
    (``operand``: ranked by activation; ``result``: by activation × direct logit) and ``groups`` ``[H]``: heuristics
    of one group never share a prompt (:func:`disjoint_groups`)."""

    names: list[str]
    families: list[str]
    masks: np.ndarray
    groups: np.ndarray

    @property
    def kinds(self) -> list[str]:
        return ["result" if family in RESULT_FAMILIES else "operand" for family in self.families]

    def __len__(self) -> int:
        return len(self.names)


def disjoint_groups(masks: np.ndarray) -> np.ndarray:
    """``[H]``: a group id per heuristic of ``masks`` ``[H, P]`` such that heuristics of one group never share a
    prompt (first fit, in order): the residues of one modulus, the ranges of one width and offset, the values...
    Checking a group costs O(k) for a heuristic of k prompts, not O(P)."""
    used: list[np.ndarray] = []
    groups = np.empty(len(masks), dtype=np.int64)
    for h, mask in enumerate(masks):
        prompts = np.flatnonzero(mask)
        group = next((g for g, taken in enumerate(used) if not taken[prompts].any()), len(used))
        if group == len(used):
            used.append(np.zeros(masks.shape[1], dtype=bool))
        used[group][prompts] = True
        groups[h] = group
    return groups


def _ranges(values: np.ndarray, sizes: Sequence[int], top: int) -> dict[str, np.ndarray]:
    out = {}
    for size in sizes:
        for start in range(0, max(top + 1 - size, 0) + 1, max(size // 2, 1)):
            out[f"[{start},{start + size})"] = (values >= start) & (values < start + size)
    return out


def _mods(values: np.ndarray, moduli: Sequence[int]) -> dict[str, np.ndarray]:
    return {f"{m}mod{n}": values % n == m for n in moduli for m in range(n)}


def digit_patterns(values: np.ndarray, top: int) -> dict[str, np.ndarray]:
    """Masks of the digit patterns of ``values`` written with as many digits as ``top`` (zero-padded): every choice
    of fixed digit positions except the empty, the full, the prefixes (ranges) and the last digit alone (mod 10);
    named like ``.3.``. Only patterns that occur are returned."""
    n_digits = len(str(top))
    digits = np.stack([(values // 10 ** (n_digits - 1 - i)) % 10 for i in range(n_digits)], axis=1)  # [P, D]
    out = {}
    for size in range(1, n_digits):
        for fixed in combinations(range(n_digits), size):
            if fixed == tuple(range(size)) or fixed == (n_digits - 1,):
                continue
            for combo in np.unique(digits[:, list(fixed)], axis=0):
                mask = (digits[:, list(fixed)] == combo).all(axis=1)
                name = ["."] * n_digits
                for position, digit in zip(fixed, combo):
                    name[position] = str(digit)
                out["".join(name)] = mask
    return out


def heuristic_set(op1: np.ndarray, op2: np.ndarray, result: np.ndarray, spec: HeuristicSpec = HeuristicSpec()
                  ) -> HeuristicSet:
    """Every fixed heuristic (all families but the per-neuron ``result_set``) over the prompts with operands
    ``op1, op2`` and results ``result`` (each ``[P]``), minus those covering fewer than ``spec.min_prompts`` prompts
    or more than ``spec.max_coverage`` of them."""
    op1, op2, result = (np.asarray(a, dtype=np.int64) for a in (op1, op2, result))
    top_operand, top_result = int(max(op1.max(), op2.max())), int(max(result.max(), 0))
    candidates: list[tuple[str, str, np.ndarray]] = []

    def add(family: str, masks: dict[str, np.ndarray]) -> None:
        candidates.extend((family, f"{family}_{label}", mask) for label, mask in masks.items())

    for family, values in (("op1", op1), ("op2", op2)):
        add(f"{family}_range", _ranges(values, spec.range_sizes, top_operand))
        add(f"{family}_mod", _mods(values, spec.moduli))
        add(f"{family}_pattern", digit_patterns(values, top_operand))
        add(f"{family}_value", {str(v): values == v for v in np.unique(values)})
    ranges1, ranges2 = _ranges(op1, spec.range_sizes, top_operand), _ranges(op2, spec.range_sizes, top_operand)
    both = {label: ranges1[label] & ranges2[label] for label in ranges1}
    add("both_range", both)
    mods1, mods2 = _mods(op1, spec.moduli), _mods(op2, spec.moduli)
    add("both_mod", {label: mods1[label] & mods2[label] for label in mods1})
    add("same_operand", {"": op1 == op2})
    add("result_range", _ranges(result, spec.range_sizes, top_result))
    add("result_mod", _mods(result, spec.moduli))
    add("result_pattern", digit_patterns(result, top_result))
    add("result_value", {str(v): result == v for v in np.unique(result)})
    n = len(op1)
    kept = [(family, name.rstrip("_"), mask) for family, name, mask in candidates
            if max(spec.min_prompts, 1) <= mask.sum() <= spec.max_coverage * n]
    if not kept:
        return HeuristicSet([], [], np.zeros((0, n), dtype=bool), np.zeros(0, dtype=np.int64))
    families, names, masks = zip(*kept)
    masks = np.stack(masks)
    return HeuristicSet(list(names), list(families), masks, disjoint_groups(masks))
