"""Arithmetic prompt sets: legal prompts, the model's answers, selection of k correct prompts, counterfactuals.

For one model and operator (see :mod:`circuitflow.arithmetic` for legality):

1. every legal prompt ``"x{op}y="`` (optionally behind a few-shot prefix) is tokenized with the model's own
   tokenizer; a prompt is kept only if ``prompt + str(answer)`` tokenizes as the prompt's tokens plus exactly one
   token (the answer token), checked for every prompt rather than assumed;
2. the model is run on all of them (batched, grouped by token length so no padding is needed) and a prompt is
   *correct* when the argmax at the last position is the answer token;
3. ``k`` correct prompts are chosen, seeded, maximizing the number of distinct answers (round-robin over answers);
4. each chosen prompt gets a counterfactual partner: a correct prompt of the same operator with a different answer
   and the same token length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from circuitflow.arithmetic import OPERATORS, Division, Operator, answers, legal_pairs, prompt_text


class PromptError(ValueError):
    """The prompt set cannot be built as configured; the message names the config field and the fix."""


@dataclass(frozen=True)
class PromptConfig:
    """Config key ``prompts``: operand range, how many prompts per operator, few-shot prefix, seed."""

    operand_max: int = 99
    answer_max: int | None = None
    k: int = 50
    division: Division = "floor"
    few_shot: int = 0
    few_shot_separator: str = ";"
    seed: int = 0


def few_shot_prefix(op: Operator, cfg: PromptConfig, answer_max: int) -> str:
    """``cfg.few_shot`` solved examples of ``op`` joined by the separator (seeded), e.g. ``"3+4=7;10+2=12;"``."""
    if cfg.few_shot == 0:
        return ""
    pairs = legal_pairs(op, cfg.operand_max, answer_max, cfg.division)
    rng = np.random.default_rng([cfg.seed, 7, cfg.few_shot])
    chosen = pairs[rng.choice(len(pairs), size=cfg.few_shot, replace=False)]
    results = answers(op, chosen[:, 0], chosen[:, 1])
    return "".join(f"{prompt_text(op, int(x), int(y))}{r}{cfg.few_shot_separator}"
                   for (x, y), r in zip(chosen, results))


def prompt_prefix(prompts: pd.DataFrame) -> str:
    """The few-shot prefix the prompt stage put before every prompt of ``prompts`` (a prompt set or answers table:
    ``operator, op1, op2, prompt``), read back from the prompts themselves: each ``prompt`` minus its
    ``x{op}y=``. Raises :class:`PromptError` when the rows do not share one prefix."""
    prefixes = {text[: len(text) - len(tail)] if text.endswith(tail) else None
                for text, tail in ((row.prompt, prompt_text(row.operator, int(row.op1), int(row.op2)))
                                   for row in prompts.itertuples())}
    if len(prefixes) != 1 or None in prefixes:
        raise PromptError("prompts table: its prompts do not share one few-shot prefix before 'x op y='; rebuild it "
                          "with the prompts rule")
    return prefixes.pop()


def all_pair_prompts(operand_max: int, prefix: str) -> list[str]:
    """Every ``x op y=`` with operands ``0..operand_max`` for every operator, legal or not, behind ``prefix`` (the
    dataset of the paper's per-position means). Give the prefix of the prompt set being evaluated
    (:func:`prompt_prefix`): it is context every evaluated prompt shares, so its positions' means are then exactly
    their clean activations and only the ``x op y=`` positions are ablated."""
    return [prefix + prompt_text(op, x, y) for op in OPERATORS for x in range(operand_max + 1)
            for y in range(operand_max + 1)]


def tokenize_prompts(tokenizer, prompts: Sequence[str],
                     answer_texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt, and the answer's token id: the one token that ``prompt + answer`` adds to the
    prompt's tokens (-1 when the answer adds more than one token, changes the prompt's tokens, or is unknown)."""
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    full_ids = tokenizer([p + a for p, a in zip(prompts, answer_texts)])["input_ids"]
    unk = tokenizer.unk_token_id
    answer_ids = [f[-1] if len(f) == len(p) + 1 and f[: len(p)] == p and f[-1] != unk else -1
                  for p, f in zip(prompt_ids, full_ids)]
    return prompt_ids, answer_ids


@torch.no_grad()
def last_token_predictions(model, token_lists: Sequence[Sequence[int]], batch_size: int = 512) -> np.ndarray:
    """Argmax token at the last position for each prompt; prompts are grouped by length, so no padding is used."""
    device = next(model.parameters()).device
    lengths = np.array([len(t) for t in token_lists])
    out = np.full(len(token_lists), -1, dtype=np.int64)
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            tokens = torch.tensor([token_lists[i] for i in chunk], device=device)
            out[chunk] = model(tokens).logits[:, -1].argmax(-1).cpu().numpy()
    return out


def evaluate_operator(
    model, tokenizer, op: Operator, cfg: PromptConfig, answer_max: int, batch_size: int = 512
) -> pd.DataFrame:
    """All legal prompts of ``op`` with tokens, answer token, the model's prediction and correctness.

    Columns: ``operator, op1, op2, answer, prompt, prompt_len, answer_token, predicted_token, correct``.
    Raises :class:`PromptError` when no prompt is legal or no answer is a single token.
    """
    pairs = legal_pairs(op, cfg.operand_max, answer_max, cfg.division)
    if len(pairs) == 0:
        raise PromptError(f"prompts.operand_max={cfg.operand_max}: no legal {op} prompt has an answer in "
                          f"0..{answer_max}")
    results = answers(op, pairs[:, 0], pairs[:, 1])
    prefix = few_shot_prefix(op, cfg, answer_max)
    prompts = [prefix + prompt_text(op, int(x), int(y)) for x, y in pairs]
    prompt_ids, answer_ids = tokenize_prompts(tokenizer, prompts, [str(r) for r in results])
    frame = pd.DataFrame(dict(operator=op, op1=pairs[:, 0], op2=pairs[:, 1], answer=results, prompt=prompts,
                              prompt_len=[len(t) for t in prompt_ids], answer_token=answer_ids))
    single = frame["answer_token"].to_numpy() >= 0
    if not single.any():
        raise PromptError(f"prompts: no {op} answer in 0..{answer_max} is a single token for this tokenizer; lower "
                          "prompts.answer_max/operand_max")
    frame = frame[single].reset_index(drop=True)
    kept_ids = [prompt_ids[i] for i in np.flatnonzero(single)]
    frame["predicted_token"] = last_token_predictions(model, kept_ids, batch_size)
    frame["correct"] = frame["predicted_token"] == frame["answer_token"]
    return frame


def choose_distinct(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """All rows reordered so that every prefix has as many distinct ``answer`` values as possible: a random row of
    each answer (answers in random order), then a second row of each, and so on."""
    shuffled = frame.iloc[rng.permutation(len(frame))]
    rank = shuffled.groupby("answer").cumcount()
    answer_order = {a: i for i, a in enumerate(rng.permutation(shuffled["answer"].unique()))}
    key = rank.to_numpy() * len(answer_order) + shuffled["answer"].map(answer_order).to_numpy()
    return shuffled.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)


def add_counterfactuals(ordered: pd.DataFrame, pool: pd.DataFrame, k: int, rng: np.random.Generator) -> pd.DataFrame:
    """The first ``k`` rows of ``ordered`` that have a partner in ``pool`` (a prompt with a different answer and the
    same token length), with the partner's columns added as ``corrupt_*``."""
    by_length = {length: rows for length, rows in pool.groupby("prompt_len")}
    kept, partners = [], []
    for position, row in enumerate(ordered.itertuples()):
        if len(kept) == k:
            break
        same_length = by_length.get(row.prompt_len)
        if same_length is None:
            continue
        candidates = same_length[same_length["answer"].to_numpy() != row.answer]
        if len(candidates):
            kept.append(position)
            partners.append(candidates.iloc[int(rng.integers(len(candidates)))])
    out = ordered.iloc[kept].reset_index(drop=True)
    partner_frame = pd.DataFrame(partners).reset_index(drop=True)
    for col in ("prompt", "op1", "op2", "answer", "answer_token"):
        out[f"corrupt_{col}"] = partner_frame[col].to_numpy() if kept else np.array([], dtype=np.int64)
    return out


def build_prompt_set(
    model, tokenizer, op: Operator, cfg: PromptConfig, answer_max: int, batch_size: int = 512
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate all legal prompts of ``op``, then choose ``cfg.k`` correct ones with counterfactual partners.

    Returns ``(prompt_set, evaluated)``: the chosen prompts (one row each, with ``corrupt_*`` columns) and the full
    evaluation table (for accuracy). Raises :class:`PromptError` when fewer than ``k`` prompts qualify.
    """
    evaluated = evaluate_operator(model, tokenizer, op, cfg, answer_max, batch_size)
    correct = evaluated[evaluated["correct"]].drop(columns=["predicted_token", "correct"])
    rng = np.random.default_rng([cfg.seed, OPERATORS.index(op)])
    chosen = add_counterfactuals(choose_distinct(correct, rng), correct, cfg.k, rng)
    if len(chosen) < cfg.k:
        raise PromptError(f"prompts.k={cfg.k}: the model answers only {len(correct)} of {len(evaluated)} legal {op} "
                          f"prompts correctly ({len(chosen)} with a counterfactual partner); lower prompts.k to at "
                          f"most {len(chosen)}")
    chosen.insert(0, "index", np.arange(len(chosen)))
    return chosen, evaluated


def resolve_answer_max(tokenizer, cfg: PromptConfig) -> int:
    """``cfg.answer_max``, or the largest single-token number capped at ``cfg.operand_max``; checked against the
    tokenizer either way."""
    from circuitflow.models.tokens import max_single_token_number

    largest = max_single_token_number(tokenizer, limit=max(cfg.operand_max, cfg.answer_max or 0))
    if largest < 0:
        raise PromptError("prompts: '0' is not a single token for this tokenizer; this model cannot be analysed")
    if cfg.answer_max is None:
        return min(cfg.operand_max, largest)
    if cfg.answer_max > largest:
        raise PromptError(f"prompts.answer_max={cfg.answer_max}: this tokenizer has single tokens only for "
                          f"0..{largest}; set prompts.answer_max to at most {largest}")
    return cfg.answer_max
