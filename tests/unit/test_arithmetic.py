import numpy as np
import pytest

from circuitflow.arithmetic import answers, check_operator, legal_pairs, prompt_text


def test_legal_pairs_known_counts():
    # x + y <= 99 with x, y in 0..99: sum_{x=0}^{99} (100 - x) = 5050 pairs; likewise x >= y.
    assert len(legal_pairs("add", 99, 99)) == 5050
    assert len(legal_pairs("sub", 99, 99)) == 5050
    # floor division: every y >= 1 is legal, 100 * 99 pairs.
    assert len(legal_pairs("div", 99, 99)) == 9900
    # exact division with operands 0..6: pairs (x, y) with y | x, y >= 1.
    exact = {tuple(p) for p in legal_pairs("div", 6, 6, "exact")}
    assert exact == {(x, y) for x in range(7) for y in range(1, 7) if x % y == 0}


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_legal_answers_in_range(op):
    pairs = legal_pairs(op, 30, 40)
    r = answers(op, pairs[:, 0], pairs[:, 1])
    assert r.min() >= 0 and r.max() <= 40
    # and every pair left out has an answer out of range
    all_pairs = {(x, y) for x in range(31) for y in range(31) if op != "div" or y > 0}
    missing = all_pairs - {tuple(p) for p in pairs}
    for x, y in missing:
        assert not 0 <= int(answers(op, np.array(x), np.array(y))) <= 40


def test_prompt_text_and_operator_check():
    assert prompt_text("add", 12, 7) == "12+7="
    assert prompt_text("div", 9, 2) == "9/2="
    with pytest.raises(ValueError, match="unknown operator 'pow'"):
        check_operator("pow")
