"""Prompt sets: correctness filter, distinct answers, counterfactual partners, single-token answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from circuitflow.models import load_hf_model, load_tokenizer
from circuitflow.prompts import (
    PromptConfig,
    PromptError,
    add_counterfactuals,
    build_prompt_set,
    choose_distinct,
    few_shot_prefix,
    resolve_answer_max,
    tokenize_prompts,
)
from circuitflow.toy import build_tokenizer


@pytest.fixture(scope="module")
def toy(toy_handle):
    return load_hf_model(toy_handle, "cpu"), load_tokenizer(toy_handle)


def test_choose_distinct_maximizes_distinct_answers():
    frame = pd.DataFrame({"answer": [1] * 10 + [2] * 3 + [3], "x": range(14)})
    ordered = choose_distinct(frame, np.random.default_rng(0))
    assert ordered["answer"].head(3).nunique() == 3
    assert ordered["answer"].head(7).value_counts().to_dict() == {1: 3, 2: 3, 3: 1}


def test_counterfactuals_have_other_answer_and_same_length():
    pool = pd.DataFrame({"prompt": list("abcde"), "op1": range(5), "op2": range(5), "answer": [1, 1, 2, 3, 3],
                         "answer_token": range(5), "prompt_len": [4, 4, 4, 5, 5]})
    out = add_counterfactuals(pool, pool, k=5, rng=np.random.default_rng(0))
    assert (out["corrupt_answer"] != out["answer"]).all()
    lengths = dict(zip(pool["prompt"], pool["prompt_len"]))
    assert [lengths[p] for p in out["corrupt_prompt"]] == out["prompt_len"].tolist()


def test_answer_tokens_are_checked_with_the_tokenizer():
    tok = build_tokenizer(20)
    _, ids = tokenize_prompts(tok, ["3+4=", "15+9=", "12-3="], ["7", "24", "9"])
    assert ids[0] == tok.convert_tokens_to_ids("7")
    assert ids[1] == -1  # 24 is not in the vocabulary: <unk> is not an answer token
    assert ids[2] == tok.convert_tokens_to_ids("9")


def test_prompt_set_is_correct_distinct_and_seeded(toy):
    model, tok = toy
    cfg = PromptConfig(operand_max=12, k=10, seed=1)
    chosen, evaluated = build_prompt_set(model, tok, "mul", cfg, resolve_answer_max(tok, cfg))
    again, _ = build_prompt_set(model, tok, "mul", cfg, resolve_answer_max(tok, cfg))
    pd.testing.assert_frame_equal(chosen, again)
    assert len(chosen) == 10 and chosen["answer"].nunique() == min(10, evaluated[evaluated.correct].answer.nunique())
    assert (chosen["op1"] * chosen["op2"] == chosen["answer"]).all()
    correct = set(evaluated[evaluated["correct"]]["prompt"])
    assert set(chosen["prompt"]) <= correct and set(chosen["corrupt_prompt"]) <= correct
    assert (chosen["corrupt_answer"] != chosen["answer"]).all()
    # the model really predicts the chosen answers
    predictions = evaluated.set_index("prompt")["predicted_token"]
    assert (predictions[chosen["prompt"]].to_numpy() == chosen["answer_token"].to_numpy()).all()


def test_k_larger_than_correct_prompts_is_a_clear_error(toy):
    model, tok = toy
    cfg = PromptConfig(operand_max=12, k=10_000)
    with pytest.raises(PromptError, match=r"prompts.k=10000: the model answers only \d+ of \d+ legal add prompts"):
        build_prompt_set(model, tok, "add", cfg, 12)


def test_answer_max_beyond_vocabulary_is_a_clear_error(toy):
    _, tok = toy
    with pytest.raises(PromptError, match="prompts.answer_max=50: this tokenizer has single tokens only for 0..12"):
        resolve_answer_max(tok, PromptConfig(operand_max=12, answer_max=50))


def test_few_shot_prefix_is_solved_examples():
    prefix = few_shot_prefix("sub", PromptConfig(operand_max=9, few_shot=3, seed=2), 9)
    examples = prefix.split(";")[:-1]
    assert len(examples) == 3
    for example in examples:
        lhs, result = example.split("=")
        x, y = map(int, lhs.split("-"))
        assert x - y == int(result)
